"""A distributed training stage as one Prefect task that owns the `mlx.launch` of every rank (and the same for
generation or scoring with a model sharded over the ranks: `sharded_inference`).

The task writes the job (realign.train.distributed_job.DistributedJob) into the stage directory, launches it on
the recipe's hosts (DistributedConfig), forwards each rank's lines to the run log as they arrive (rank 0's step
rows as progress lines), and fails with the rank and host of a rank that died. Checkpoints live in the job's
out_dir, so a retry (Prefect's, or a rerun of the stage) resumes from the last one written: same world size, same
job, bit-identical continuation.

The training stages (stage 1's SFT and the abliteration behaviour model, the DPO, SRF and RLVR workflows' stage 5,
the SRF reward model, the anti-hallucination stages 3 and 5) use `stage_distributed` to read the recipe's
`distributed:` section, `train_on_ranks` to write their data and job and launch it, and `load_trained` to
bring rank 0's trained weights back into the stage's own model, which then goes on exactly as after a
single-process run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from hardware.config import HardwareConfig
from realign.model.generate import GenerationConfig
from realign.model.load import is_adapter_dir
from realign.model.sharded import ShardedJob
from realign.train.distributed_job import DistributedConfig, DistributedJob, RankFailed, hostfile_hosts, launch
from realign.train.loop import TrainConfig, TrainResult
from realign.train.objectives import PreferenceLossConfig
from realign.train.reward import RewardTrainingConfig
from realign.train.rl import RLConfig

JOB_MODULE = "realign.train.distributed_job"
SHARDED_MODULE = "realign.model.sharded"


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow run (tests, scripts)
        return logging.getLogger("realign.distributed")


def step_line(row: dict) -> str:
    """A rank-0 step row as one progress line: loss, step time, the slowest rank's wait and the all_sum time."""
    waits = [v for k, v in row.items() if k.startswith("wait_s/rank")]
    return (
        f"step {row['step']}: loss {row.get('loss', float('nan')):.4f}, {row['seconds']:.2f} s "
        f"(all_sum {row.get('comm_s', 0.0):.3f} s, longest wait {max(waits, default=0.0):.3f} s, "
        f"{row.get('ranks', 1)} ranks)"
    )


def rank_shares(cfg: DistributedConfig, hw: HardwareConfig | None = None) -> list[float] | None:
    """Each rank's share of a global batch: the recipe's `shares`, else its machine's calibrated throughput (the
    profiles the shard planner reads; peak training examples/s) split over that machine's ranks, else None (even).

    mlx.launch numbers ranks host by host (host 0's ranks first), so shares follow the hosts' order.
    """
    if cfg.shares is not None:
        return list(cfg.shares)
    if not cfg.machines:
        return None
    hosts, per_host = max(1, len(cfg.hosts)), cfg.ranks_per_host
    if cfg.hostfile:  # one rank per hostfile entry (mlx.launch ignores -n with a hostfile)
        hosts, per_host = len(hostfile_hosts(cfg.hostfile)), 1
    if len(cfg.machines) != hosts:
        raise ValueError(f"distributed.machines names {len(cfg.machines)} machines for {hosts} hosts")
    hw = hw or HardwareConfig()
    return [hw.machine(m).peak_examples_per_s / per_host for m in cfg.machines for _ in range(per_host)]


def run_distributed_training(job: DistributedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """Launch `job` on the ranks `cfg` names and return rank 0's result.json (history, steps, rank divergence).

    A job without shares gets the ranks' shares from `cfg` (rank_shares). Raises RankFailed naming the rank and
    host that failed (its last lines in the message).
    """
    log = _logger()
    if job.shares is None:
        job = job.model_copy(update={"shares": rank_shares(cfg)})
        if job.shares is not None:
            log.info(f"ranks' shares of each global batch: {', '.join(f'{s:g}' for s in job.shares)}")
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / "job.json"
    job_path.write_text(job.model_dump_json(indent=1))

    def forward(line: str) -> None:
        if line.startswith('{"rank": '):
            try:
                row = json.loads(line)
            except ValueError:
                log.info(line)
                return
            log.info(step_line(row))
        elif line.strip():
            log.info(line)

    try:
        launch(cfg, ["-m", JOB_MODULE, str(job_path)], on_line=forward, timeout=timeout)
    except RankFailed as exc:
        log.error(str(exc).splitlines()[0] + " A retry resumes from the last checkpoint in " + str(out / "checkpoints"))
        raise
    return json.loads((out / "result.json").read_text())


@task(name="distributed-training", retries=1, retry_delay_seconds=5)
def train_distributed(job: DistributedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """The Prefect task: one launch of all ranks; a failed rank fails it (named), a retry resumes."""
    return run_distributed_training(job, cfg, timeout)


def run_sharded_inference(job: ShardedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """Generate or score with the model split over the ranks `cfg` names (realign.model.sharded); rank 0's output.

    Raises RankFailed naming the rank and host that failed.
    """
    log = _logger()
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    job_path = out.with_suffix(".job.json")
    job_path.write_text(job.model_dump_json(indent=1))
    launch(
        cfg,
        ["-m", SHARDED_MODULE, str(job_path)],
        on_line=lambda line: line.strip() and log.info(line),
        timeout=timeout,
    )
    return json.loads(out.read_text())


@task(name="sharded-inference", retries=1, retry_delay_seconds=5)
def sharded_inference(job: ShardedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """The Prefect task: one launch of all ranks holding one model between them; a failed rank fails it (named)."""
    return run_sharded_inference(job, cfg, timeout)


# --- what the sampling stage calls ------------------------------------------------------------------


def sharded_sampling(cfg: DistributedConfig | None, model_dir: str, examples: int) -> str | None:
    """Why stage 2 samples with the model split over the ranks of `cfg`, or None (sample here or over the pools).

    The recipe forces it (`distributed.model_sharding: always`) or forbids it (`never`); by default (`plan`) the
    hardware plan decides: its 'sharded' mode means the model fits no single machine (hardware.selection). A plan
    that says sharded for a recipe without a `distributed` section is a warning, not an error: the machine this
    runs on may hold more than the profiles say.
    """
    if cfg is not None and cfg.model_sharding == "never":
        return None
    # mlx-lm's sharded loader reads a model directory, not LoRA adapters over one (a LoRA stage's output)
    adapters = is_adapter_dir(model_dir)
    if cfg is not None and cfg.model_sharding == "always":
        if adapters:
            raise ValueError(
                f"distributed.model_sharding 'always': {model_dir} holds LoRA adapters, which the sharded loader "
                "cannot apply; train without LoRA (lora: null) or fuse the adapters (fuse_final), or set "
                "model_sharding: plan"
            )
        return "the recipe's distributed.model_sharding is 'always'"
    from hardware.plan import make_plan

    try:
        plan = make_plan(model_dir, max(1, examples))
    except Exception as exc:  # noqa: BLE001 - the plan only advises here; a config it cannot read must not stop it
        _logger().info(f"no hardware plan for {model_dir} ({exc}): sampling in this process")
        return None
    if plan.mode != "sharded":
        return None
    if cfg is None or adapters:
        _logger().warning(
            f"the hardware plan says the model is to be sharded ({plan.reason}), but "
            + (
                "the recipe has no distributed section: sampling in this process. Add distributed: {hosts: [...]} "
                "to split it over machines."
                if cfg is None
                else f"{model_dir} holds LoRA adapters, which the sharded loader cannot apply: sampling in this "
                "process (fuse the adapters to sample sharded)."
            )
        )
        return None
    return f"the hardware plan says sharded: {plan.reason}"


def sample_on_sharded_model(
    prompts: list[str], model_dir: str, generation: GenerationConfig, cfg: DistributedConfig, job_dir: str | Path
) -> tuple[list[list[str]], str]:
    """`generation.n` answers per prompt from the model split over the ranks `cfg` names (one `sharded_inference`
    launch; every rank samples the same tokens, rank 0 writes them). Returns (texts per prompt, the mode used)."""
    out = Path(job_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    job = ShardedJob(
        kind="generate",
        model=str(model_dir),
        data=str(data),
        out=str(out / "generated.json"),
        mode=cfg.shard_mode,
        generation=generation,
    )
    done = sharded_inference(job, cfg)
    return [[c["text"] for c in per] for per in done["results"]], done["mode"]


# --- what the training stages call ---------------------------------------------------------------


def stage_distributed(run_dir: str | Path, given: DistributedConfig | None = None) -> DistributedConfig | None:
    """A training stage's ranks: `given`, else the `distributed` section of RUN_DIR/recipe.json (the resolved recipe
    the flow's Run writes before any stage runs), else None: train in this process."""
    if given is not None:
        return given
    path = Path(run_dir) / "recipe.json"
    if not path.is_file():
        return None
    section = json.loads(path.read_text()).get("distributed")
    return DistributedConfig.model_validate(section) if section else None


def train_on_ranks(
    kind: str,
    model_dir: str | Path,
    rows: list[dict],
    train: TrainConfig,
    cfg: DistributedConfig,
    job_dir: str | Path,
    loss: PreferenceLossConfig | None = None,
    timeout: float | None = None,
    rl: RLConfig | None = None,
    verifier: str = "auto",
    reward_model: str | None = None,
    reward_model_weight: float = 1.0,
    verifier_weight: float = 0.0,
    key: str = "",
    reward_training: RewardTrainingConfig | None = None,
) -> TrainResult:
    """Train `model_dir` on `rows` across the ranks `cfg` names: the rows go to JOB_DIR/data.jsonl ({prompt,
    completion} for kind sft, {prompt, chosen, rejected} for preference, {prompt, solution, tests} for rlvr, with
    `rl` and `verifier`, {prompt, answer} for srf, with `rl`, the reward model and the weights; pairs for reward,
    with `reward_training`), the job to
    JOB_DIR/job.json (shares from `rank_shares`), one `train_distributed` task launches it; rank 0 leaves its trained
    weights in JOB_DIR/trainable.safetensors (see `load_trained`) and its checkpoints in JOB_DIR/checkpoints.
    key: the stage's own resume key, so the ranks never continue checkpoints made from other inputs.

    Returns what the single-process loop would (its history rows also carry the per-rank timings).
    """
    out = Path(job_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not data.is_file() or data.read_text() != text:  # unchanged data keeps its bytes: a retry resumes
        data.write_text(text)
    job = DistributedJob(
        kind=kind,
        model=str(model_dir),
        data=str(data),
        out_dir=str(out),
        train=rl.train if rl is not None else reward_training.train if reward_training is not None else train,
        reward_training=reward_training,
        loss=loss or PreferenceLossConfig(),
        rl=rl,
        verifier=verifier,
        reward_model=reward_model,
        reward_model_weight=reward_model_weight,
        verifier_weight=verifier_weight,
        resume_key=key,
    )
    done = train_distributed(job, cfg, timeout)
    result = TrainResult(
        steps_done=done["steps_done"],
        stopped=done["stopped"],
        history=done["history"],
        resumed_from=done["resumed_from"],
        resume_warning=done["resume_warning"],
    )
    if done.get("reason"):  # the loop's own reason (a KL stop), as rank 0 wrote it
        result.reason = done["reason"]
    elif result.stopped == "kl_limit" and result.history:
        last = result.history[-1]
        result.reason = f"KL {last['kl']:.4f} > limit {train.kl_limit} at step {last['step']}"
    _logger().info(
        f"{kind} training on {done['ranks']} ranks: {result.steps_done} steps, ranks' weights "
        f"{done['rank_divergence']:.2g} apart"
    )
    return result


def load_trained(model, job_dir: str | Path) -> None:
    """Rank 0's trained weights into `model`, loaded from the job's model directory and prepared (prepare_model)
    with the job's TrainConfig: it then holds what training in this process would have left in it.

    Read from the job's last checkpoint, which rank 0 writes at the final step (the same arrays as its
    trainable.safetensors), through the loop's own checkpoint reader: tasks/ import no mlx. Its checksums are
    checked; the optimizer state it also restores is dropped.
    """
    from realign.train.loop import checkpoint_problem, load_checkpoint, make_optimizer

    out = Path(job_dir)
    job = DistributedJob.model_validate_json((out / "job.json").read_text())
    steps = json.loads((out / "result.json").read_text())["steps_done"]
    ckpt = out / "checkpoints" / f"step_{steps:06d}"
    problem = checkpoint_problem(ckpt)
    if problem:
        raise RuntimeError(f"the distributed run's final checkpoint cannot be read: {problem}")
    load_checkpoint(ckpt, model, make_optimizer(job.train))
