"""A training job across ranks: `mlx.launch` runs `python -m realign.train.distributed_job JOB.json` on every rank.

The job (a JSON file) names the model, the data, the objective and the training settings; every rank loads the
model and the data, trains its slice of each global batch (realign.train.distributed), and rank 0 writes the
outputs: trainable.safetensors (the trained weights the optimiser touched), result.json (history, steps, how far
the ranks' weights ended apart) and, with save_model, the model directory. Run without `mlx.launch`, the same job
trains in one process with the ordinary loop: the reference a distributed run must match.

`launch` builds and runs the `mlx.launch` command line from a DistributedConfig (hosts or a hostfile, backend,
ranks per host), streams each rank's lines to a callback, and raises RankFailed naming the rank and host of a rank
that died.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from realign.train.loop import TrainConfig
from realign.train.objectives import PreferenceLossConfig
from realign.train.reward import RewardTrainingConfig
from realign.train.rl import RLConfig


class DistributedConfig(BaseModel):
    """Where a training stage's ranks run: `mlx.launch` starts one process per rank (MLX's own transport)."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[str] = Field(
        [],  # a value, not a factory: the Prefect form shows it (pydantic copies it per instance)
        max_length=64,
        description="One per machine, ssh-reachable, with the repository and .venv at the same paths; IP addresses "
        "for the ring backend (mlx.launch requires them). Empty with no hostfile: this machine only (127.0.0.1).",
    )
    hostfile: str | None = Field(
        None, description="An `mlx.distributed_config` hostfile (JSON: ssh name and IPs per host); replaces hosts."
    )
    backend: Literal["ring", "jaccl", "jaccl-ring", "mpi"] = Field(
        "ring",
        description="ring: TCP over Ethernet or Thunderbolt IP; jaccl: RDMA over Thunderbolt 5 (macOS 26.2+, every "
        "pair of Macs cabled); jaccl-ring: RDMA, each Mac cabled to its neighbours; mpi: mpirun.",
    )
    ranks_per_host: int = Field(
        1, ge=1, le=64, description="Processes per host (mlx.launch -n); with a hostfile, one per hostfile entry."
    )
    shares: list[float] | None = Field(
        None,
        description="Relative throughput per rank (examples/s from `realign calibrate`): each rank's share of a "
        "global batch; None splits evenly.",
    )
    machines: list[str] = Field(
        [],
        max_length=64,
        description="Hardware profile per host, in host order (e.g. m4-max, m3-ultra): without shares, each rank's "
        "share is its machine's calibrated training throughput (peak examples/s) over its ranks.",
    )
    starting_port: int | None = Field(
        None, ge=1024, le=65000, description="First TCP port of the ring backend; None picks a free one locally."
    )
    python: str | None = Field(None, description="Python on the hosts; default this interpreter (same venv path).")
    model_sharding: Literal["plan", "always", "never"] = Field(
        "plan",
        description="Stage 2's sampling (DPO, SRF) with one model split over these ranks (realign.model.sharded): "
        "plan: when the hardware plan says 'sharded' (the model fits no single machine); always: force it; never.",
    )
    shard_mode: Literal["auto", "tensor", "pipeline"] = Field(
        "auto",
        description="How a sharded model is split: tensor (every layer over the ranks; wants Thunderbolt/JACCL), "
        "pipeline (consecutive layers per rank; tolerates a slower link), auto: tensor where the architecture has it.",
    )

    @model_validator(mode="after")
    def _shares_positive(self):
        if self.shares is not None and any(not s > 0 for s in self.shares):
            raise ValueError(f"shares must be > 0: {self.shares}")
        return self

    def world_size(self) -> int:
        """Ranks in all: one per hostfile entry, or ranks_per_host on each host."""
        if self.hostfile:
            return len(hostfile_hosts(self.hostfile))
        return max(1, len(self.hosts)) * self.ranks_per_host


class DistributedJob(BaseModel):
    """One distributed training run: model, data, objective, settings, output directory."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sft", "preference", "reward", "rlvr", "srf"] = Field(
        description="sft: (prompt, completion) rows; preference: pairs; reward: a reward model (scalar head) on "
        "pairs; rlvr: on-policy RL on verifiable tasks; srf: on-policy RL on prompts rewarded by a reward model "
        "(and a graded verifier)."
    )
    model: str = Field(description="Model directory every rank can read at the same path.")
    data: str = Field(
        description="JSONL: {prompt, completion} rows for sft; {prompt, chosen, rejected} for preference and "
        "reward (with chosen_score, rejected_score for a margin); "
        "{prompt, solution, tests} tasks for rlvr; {prompt, answer} for srf (answer null where none is known)."
    )
    out_dir: str = Field(description="Rank 0's outputs and checkpoints.")
    train: TrainConfig = Field(TrainConfig(), description="Optimisation settings; batch_size is the global batch.")
    loss: PreferenceLossConfig = Field(PreferenceLossConfig(), description="Preference objective (kind preference).")
    rl: RLConfig | None = Field(None, description="RL settings (kinds rlvr, srf); its `train` replaces `train`.")
    reward_training: RewardTrainingConfig | None = Field(
        None, description="Reward model settings (kind reward); its `train` replaces `train`."
    )
    verifier: str = Field("auto", description="Verifier kind that rewards the samples (kind rlvr).")
    reward_model: str | None = Field(None, description="Reward model directory every rank can read (kind srf).")
    reward_model_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of its score (kind srf).")
    verifier_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="Weight of the graded verifier on the rows' answers (kind srf)."
    )
    shares: list[float] | None = Field(None, description="Relative throughput per rank; None splits evenly.")
    chat: bool = Field(True, description="Apply the chat template to prompts.")
    save_model: bool = Field(False, description="Also write the trained model directory (rank 0) to OUT_DIR/model.")
    resume_key: str = Field(
        "",
        description="The stage's own resume key (its inputs' digest: start weights, settings): checkpoints made under "
        "another are never continued.",
    )


def _rows(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_job(job: DistributedJob) -> dict:
    """Train `job` on this rank; rank 0 writes the outputs. Returns the summary rank 0 writes to result.json."""
    import mlx.core as mx

    from realign.model.load import load_model
    from realign.model.logprobs import reference_logps
    from realign.train.batches import preference_batches, sft_batches
    from realign.train.distributed import DataParallel, rank_divergence, world
    from realign.train.loop import prepare_model, resume_key, train
    from realign.train.objectives import preference_loss, sft_loss

    group = world()
    rank, size = group.rank(), group.size()
    if job.kind in ("rlvr", "srf"):
        return _run_rl_job(job, group)
    if job.kind == "reward":
        return _run_reward_job(job, group)
    cfg = job.train
    lm = load_model(job.model)
    rows = _rows(job.data)
    key = resume_key(Path(job.data).read_bytes(), job.model, job.kind, job.loss.model_dump_json(), job.resume_key)
    if job.kind == "sft":
        batches = sft_batches(lm.tokenizer, [(r["prompt"], r["completion"]) for r in rows], cfg, chat=job.chat)
        loss, layout, weight_by = sft_loss, "rows", "tokens"
    else:
        ref = None
        if job.loss.method == "dpo":
            # Each rank scores its stride of the pairs with the start model; a sum assembles them everywhere.
            import numpy as np

            mine = list(range(rank, len(rows), size))
            part = reference_logps(
                lm.model, lm.tokenizer, [rows[i] for i in mine], chat=job.chat, max_len=cfg.max_seq_len
            )
            ref = {}
            for name in ("chosen_logps", "rejected_logps"):
                full = np.zeros(len(rows), dtype=np.float32)
                full[mine] = part[name]
                ref[name] = np.array(mx.distributed.all_sum(mx.array(full), group=group)) if size > 1 else full
        batches = preference_batches(lm.tokenizer, rows, cfg, ref=ref, chat=job.chat)
        loss, layout, weight_by = preference_loss(job.loss), "pairs", "examples"
    prepare_model(lm.model, cfg)
    parallel = None
    if size > 1:
        shares = tuple(job.shares) if job.shares is not None else None
        parallel = DataParallel(group, layout=layout, weight_by=weight_by, shares=shares)

    def report(row: dict) -> None:
        print(json.dumps({"rank": rank, **row}), flush=True)  # one line per step: the launcher forwards it

    result = train(
        lm.model,
        loss,
        batches,
        cfg,
        out_dir=job.out_dir,
        callback=report,
        resume_key=key,
        parallel=parallel,  # KL and entropy every train.metrics_every steps (and at the last), as the stage tasks
    )
    return _finish(job, lm, result, rank_divergence(lm.model.trainable_parameters(), group), size, rank)


def _run_reward_job(job: DistributedJob, group) -> dict:
    """kind reward: the Bradley-Terry reward model (realign.train.reward.fit_reward_model) on the rows' pairs, each
    rank taking its share of every global batch of pairs; rank 0 writes the trained head and backbone."""
    from realign.model.load import load_model
    from realign.train.distributed import DataParallel, rank_divergence
    from realign.train.loop import resume_key
    from realign.train.reward import fit_reward_model

    if job.reward_training is None:
        raise ValueError("a reward job needs reward_training (the stage's RewardTrainingConfig)")
    rank, size = group.rank(), group.size()
    lm = load_model(job.model)
    rows = _rows(job.data)
    key = resume_key(
        Path(job.data).read_bytes(), job.model, job.kind, job.reward_training.model_dump_json(), job.resume_key
    )
    parallel = None
    if size > 1:
        shares = tuple(job.shares) if job.shares is not None else None
        parallel = DataParallel(group, layout="pairs", weight_by="examples", shares=shares)
    model, result = fit_reward_model(
        lm.model,
        lm.tokenizer,
        rows,
        job.reward_training,
        out_dir=job.out_dir,
        callback=lambda row: print(json.dumps({"rank": rank, **row}), flush=True),
        resume_key=key,
        parallel=parallel,
    )
    return _finish(job, lm, result, rank_divergence(model.trainable_parameters(), group), size, rank, model)


def _run_rl_job(job: DistributedJob, group) -> dict:
    """kinds rlvr and srf: GRPO/RLOO on the rows' prompts, each rank sampling whole groups of its share of every
    step's prompts (realign.train.rl.rl_train with a DataParallel) and rewarding them itself: rlvr with the tasks'
    verifier, srf with the reward model (every rank loads it) and the graded verifier, by weight."""
    from realign.model.load import load_model
    from realign.score.combined import WeightedSum
    from realign.score.reward_model import load_reward_model
    from realign.score.verifiers import Verifier
    from realign.score.verify import TaskVerifier
    from realign.train.distributed import DataParallel, rank_divergence
    from realign.train.loop import prepare_model, resume_key
    from realign.train.rl import rl_train

    if job.rl is None:
        raise ValueError(f"a job of kind {job.kind} needs its rl settings (DistributedJob.rl)")
    rank, size = group.rank(), group.size()
    tasks = _rows(job.data)
    if job.kind == "rlvr":
        tests = {t["prompt"]: t["tests"] for t in tasks if t.get("tests")}  # the python verifier runs them
        reward = TaskVerifier({t["prompt"]: t["solution"] for t in tasks}, job.verifier, tests)
    else:
        terms = []
        if job.reward_model_weight:
            if not job.reward_model:
                raise ValueError("a job of kind srf with reward_model_weight > 0 needs its reward_model directory")
            terms.append((load_reward_model(job.reward_model), job.reward_model_weight))
        if job.verifier_weight:
            answers = {t["prompt"]: t["answer"] for t in tasks if t.get("answer") is not None}
            terms.append((Verifier(answers, mode="graded"), job.verifier_weight))
        reward = WeightedSum(terms)
    lm = load_model(job.model)
    reference = None if job.rl.train.lora is not None else load_model(job.model).model  # LoRA: the base, adapters off
    prepare_model(lm.model, job.rl.train)
    parallel = DataParallel(group, shares=tuple(job.shares) if job.shares else None) if size > 1 else None
    key = resume_key(
        Path(job.data).read_bytes(),
        job.model,
        job.kind,
        job.verifier,
        job.reward_model or "",
        f"{job.reward_model_weight}|{job.verifier_weight}",
        job.resume_key,
    )
    if job.reward_model and Path(job.reward_model, "score_head.safetensors").is_file():
        key = resume_key(key, Path(job.reward_model, "score_head.safetensors").read_bytes())

    def report(row: dict) -> None:
        print(json.dumps({"rank": rank, **row}), flush=True)  # one line per step: the launcher forwards it

    result = rl_train(
        lm.model,
        lm.tokenizer,
        [t["prompt"] for t in tasks],
        reward.score,
        job.rl,
        reference=reference,
        out_dir=job.out_dir,
        callback=report,
        resume_key=key,
        parallel=parallel,
    )
    return _finish(job, lm, result, rank_divergence(lm.model.trainable_parameters(), group), size, rank)


def _finish(job: DistributedJob, lm, result, divergence: float, size: int, rank: int, model=None) -> dict:
    """Rank 0 writes trainable.safetensors (atomically), the model directory when asked, and result.json.
    model: what was trained, when not lm.model itself (the reward model wraps it)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from realign.model.load import save_model

    summary = {
        "ranks": size,
        "steps_done": result.steps_done,
        "stopped": result.stopped,
        "reason": result.reason,
        "resumed_from": result.resumed_from,
        "resume_warning": result.resume_warning,
        "rank_divergence": divergence,
        "history": result.history,
    }
    if rank == 0:
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".trainable.tmp.safetensors"  # written beside, then renamed: readers never see half a file
        mx.save_safetensors(str(tmp), dict(tree_flatten((model or lm.model).trainable_parameters())))
        os.replace(tmp, out / "trainable.safetensors")
        if job.save_model:
            save_model(lm.model, lm.path, out / "model")
        (out / "result.json").write_text(json.dumps(summary))
    return summary


# --- launching --------------------------------------------------------------------------------


class RankFailed(RuntimeError):
    """A rank of a distributed run exited with an error; the message names its rank and host."""

    def __init__(self, message: str, rank: int | None, host: str | None, returncode: int):
        super().__init__(message)
        self.rank, self.host, self.returncode = rank, host, returncode


def _free_port(n: int) -> int:
    """A local port with the next n - 1 free too (the ring backend listens on port + rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n < 65000:
            return port
    raise RuntimeError("no free TCP port found for the ring backend")


def launch_command(cfg: DistributedConfig, args: list[str]) -> list[str]:
    """The `mlx.launch` argv running `python ARGS` on every rank."""
    python = cfg.python or sys.executable
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or "mlx.launch"
    cmd = [launcher, "--backend", cfg.backend, "--python", python]
    if cfg.hostfile:
        cmd += ["--hostfile", cfg.hostfile]
    else:
        cmd += ["--hosts", ",".join(cfg.hosts or ["127.0.0.1"])]
    cmd += ["-n", str(cfg.ranks_per_host)]
    if cfg.backend == "ring":
        cmd += ["--starting-port", str(cfg.starting_port or _free_port(cfg.world_size()))]
    return [*cmd, *args]


# Every rank runs under `guard` (launch adds it): a rank that fails says so itself, with its rank and whether its
# error is only a peer going away. mlx.launch reports ranks in the order they ended, and that is often a victim
# first: the rank whose peer died reads "closed by the peer" and exits while the culprit is still shutting down.
_FAILED_LINE = re.compile(r'^\{"rank_failed": (\d+), "peer_error": (true|false)')
_PEER_ERROR = re.compile(r"closed by the peer|connection reset|broken pipe|\[ring\]|\[jaccl\]", re.IGNORECASE)


def guard(argv: list[str]) -> None:
    """Run `python ARGV` (a script path, or -m MODULE ...) as __main__; on failure print one line
    {"rank_failed": RANK, "peer_error": BOOL, "error": ...} before the error propagates."""
    rank = int(os.environ.get("MLX_RANK", "0"))
    try:
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _report_failure(rank, str(exc.code))
        raise
    except BaseException as exc:
        _report_failure(rank, f"{type(exc).__name__}: {exc}")
        raise


def _report_failure(rank: int, error: str) -> None:
    peer = bool(_PEER_ERROR.search(error))
    print(json.dumps({"rank_failed": rank, "peer_error": peer, "error": error[:500]}), flush=True)


def launch(
    cfg: DistributedConfig,
    args: list[str],
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
    env: dict | None = None,
) -> list[str]:
    """Run `python ARGS` on every rank through `mlx.launch`; return all output lines.

    Each line goes to on_line as it arrives. When a rank fails, mlx.launch stops the others and exits non-zero:
    RankFailed then names the first rank mlx.launch reports failed, and its host, and carries the last lines.
    """
    cmd = launch_command(cfg, ["-m", "realign.train.distributed_job", "--guard", *args])
    full_env = {**os.environ, **(env or {})}
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True
    )

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if on_line:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the launcher and every rank it started (its own session)
        proc.wait()
        reader.join(5)
        raise RankFailed(f"distributed run timed out after {timeout}s: {' '.join(cmd)}", None, None, -9) from None
    reader.join(10)
    rank, host = failed_rank(lines, cfg)
    # mlx.launch (0.32) exits 0 even when a rank failed; its "[WARN] Node with rank N exited with code C" tells.
    if rc != 0 or rank is not None:
        where = f"rank {rank} on {host}" if rank is not None else "a rank"
        own = rank_error(lines, rank)
        tail = "\n".join(lines[-20:])
        said = f" Its error: {own}" if own else ""
        raise RankFailed(f"distributed run failed: {where} exited with an error.{said}\n{tail}", rank, host, rc)
    return lines


def rank_error(lines: list[str], rank: int | None) -> str | None:
    """The error a rank reported itself (its guard line), or None: the tail of the log may hold only its peers'."""
    for line in lines:
        m = _FAILED_LINE.match(line.strip())
        if m and rank is not None and int(m.group(1)) == rank:
            try:
                return json.loads(line.strip())["error"]
            except (ValueError, KeyError):
                return None
    return None


def hostfile_hosts(path: str) -> list[str]:
    """The ssh names in an MLX hostfile (a list of hosts, or {"backend", "envs", "hosts": [...]}), one per rank."""
    spec = json.loads(Path(path).read_text())
    return [h["ssh"] for h in (spec["hosts"] if isinstance(spec, dict) else spec)]


def failed_rank(lines: list[str], cfg: DistributedConfig) -> tuple[int | None, str | None]:
    """(rank, host) of the rank that failed first on its own account: a rank's own failure line (guard) that is not
    only a peer going away, else any rank's failure line, else the first rank mlx.launch reports; (None, None)."""
    hosts, per_host = cfg.hosts or ["127.0.0.1"], cfg.ranks_per_host
    if cfg.hostfile:  # one rank per entry: mlx.launch ignores -n with a hostfile
        hosts, per_host = hostfile_hosts(cfg.hostfile), 1

    def host_of(rank: int) -> str | None:
        return hosts[min(rank // per_host, len(hosts) - 1)] if hosts else None

    reported = [m for m in map(_FAILED_LINE.match, (ln.strip() for ln in lines)) if m]
    if reported:
        first = next((m for m in reported if m.group(2) == "false"), reported[0])
        return int(first.group(1)), host_of(int(first.group(1)))
    for line in lines:
        m = re.search(r"[Rr]ank (\d+) exited with code (-?\d+)", line) or re.search(
            r"\[(\d+)\] .*exit(?:ed)? with (?:code|status) (-?\d+)", line
        )
        if m and m.group(2) != "0":
            rank = int(m.group(1))
            return rank, host_of(rank)
    return None, None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--guard"] and len(args) > 1:
        guard(args[1:])
        return 0
    if len(args) != 1:
        print("usage: python -m realign.train.distributed_job JOB.json", file=sys.stderr)
        return 2
    job = DistributedJob.model_validate_json(Path(args[0]).read_text())
    run_job(job)
    return 0


if __name__ == "__main__":  # `python -m` imports the realign package (and its fast BLAS) before this module
    raise SystemExit(main())
