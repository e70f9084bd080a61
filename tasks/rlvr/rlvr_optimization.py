"""Stage 5 (RLVR): GRPO on the verifier's reward (1 when it accepts a sample, else 0), under a KL constraint; KL and
entropy measured on held-out prompts after training, and the held-out verified rate before and after."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, load_data
from realign.eval.probes import policy_drift
from realign.eval.verifiability import read_tasks, verified_rate
from realign.io import write_json, write_parquet
from realign.model.load import load_model, save_model
from realign.recipes.rlvr import RLVRStageConfig, VerifierConfig
from realign.score.verify import TaskVerifier
from realign.train.loop import prepare_model, resume_key
from realign.train.rl import rl_train
from tasks.cache import stage_task
from tasks.progress import Progress, training_line
from tasks.rlvr import RLVR_STAGES
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.srf.rl_fine_tuning import step_line
from tasks.stages import StageResult, one_row


class RLVRResult(StageResult):
    """model_dir: the trained policy. kl, entropy: on completions it sampled for held-out prompts after training.
    verified_before / after: greedy answers to held-out tasks the verifier accepted, start model and trained one."""

    model_dir: str
    metrics_path: str
    steps: int
    stopped: str
    reason: str
    kl: float
    entropy: float
    verified_before: float
    verified_after: float
    heldout_tasks: int
    reward_first: float
    reward_last: float
    samples: int

    def tables(self) -> dict[str, pd.DataFrame]:
        gain = self.verified_after - self.verified_before
        return {"rlvr_optimization": one_row(kl=self.kl, verified_rate_gain=gain)}

    def summary(self) -> dict:
        return {
            "training_steps": self.steps,
            "training_metrics": [self.metrics_path],
            "rl_samples": self.samples,
            "rl_kl": [self.kl],
            "rl_entropy": [self.entropy],
            "heldout_verified_before": [self.verified_before],
            "heldout_verified_after": [self.verified_after],
        }


@stage_task("5-rlvr-optimization", reads=("eval_sets",))
def optimize_rlvr(
    cfg: RLVRStageConfig,
    verifier: VerifierConfig,
    tasks_path: str,
    start_dir: str,
    data: DataConfig,
    run_dir: str,
    round: int = 1,
    max_tokens: int = 12,
    max_tasks: int = 2000,
) -> RLVRResult:
    """GRPO from `start_dir` (also the frozen reference) on the verifiable tasks of stage 2, rewarded by the
    verifier. The held-out tasks are the data's dev split (else its target evaluation set)."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = RLVR_STAGES.dir(run_dir, 5, round)
    tasks = read_tasks(tasks_path, max_tasks)  # the tasks stage 4 sampled (and decontamination saw)
    # with each task's tests: the python verifier runs them (without, it refuses every sample)
    tests = {t.prompt: list(t.tests) for t in tasks if t.tests}
    reward = TaskVerifier({t.prompt: t.solution for t in tasks}, verifier.kind, tests)
    prompts = [t.prompt for t in tasks]
    bundle = load_data(data)
    held = bundle.dev or bundle.target
    rl, tc = cfg.rl, cfg.rl.train
    lm = load_model(start_dir)
    reference = None if tc.lora is not None else load_model(start_dir).model  # LoRA: the base under the adapters
    before, _ = verified_rate(lm.model, lm.tokenizer, held.prompts, held.answers, verifier.kind, max_tokens=max_tokens)
    prepare_model(lm.model, tc)
    log.info(
        f"round {round}: {rl.estimator} on {len(prompts)} verifiable tasks, {tc.steps} steps x {tc.batch_size} tasks x "
        f"{rl.num_generations} samples, reward {reward.name}, beta {rl.beta}; held-out verified rate {before:.3f}"
    )

    bar = Progress(RLVR_STAGES.name(5, round), f"round {round} GRPO step", tc.steps)

    def progress(row):
        bar.update(row["step"], training_line(row), row)
        if row["step"] % max(1, tc.steps // 10) == 0 or row["step"] == tc.steps:
            log.info(f"round {round} " + step_line(row, tc.steps))

    # the tasks' contents (answers fixed in place must not resume a policy trained on the old ones)
    key = resume_key(
        Path(tasks_path).read_bytes(), repr(prompts), start_dir, cfg.model_dump_json(), verifier.model_dump_json()
    )
    ranks = stage_distributed(run_dir)
    if ranks is not None:
        # Data parallel on the ranks (the recipe's `distributed:` section), from OUT/distributed/: each rank samples
        # whole groups of its share of every step's tasks and the verifier rewards them there; the evaluations
        # before and after stay here, single-process.
        rows = [{"prompt": t.prompt, "solution": t.solution, "tests": list(t.tests or [])} for t in tasks]
        result = train_on_ranks(
            "rlvr", start_dir, rows, tc, ranks, out / "distributed", rl=rl, verifier=verifier.kind, key=key
        )
        load_trained(lm.model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], training_line(row), row)
    else:
        result = rl_train(
            lm.model,
            lm.tokenizer,
            prompts,
            reward.score,
            rl,
            reference=reference,
            out_dir=out,
            callback=progress,
            resume_key=key,
        )
    bar.finish(result.steps_done, result.reason)
    if result.resume_warning:
        log.warning(result.resume_warning)
    history = pd.DataFrame(result.history)
    history["round"] = round
    if "reward" in history:
        history["verified_rate"] = history["reward"]  # a 0/1 reward: its mean over a step's samples is their rate
    write_parquet(out / "metrics.parquet", history)
    after, _ = verified_rate(lm.model, lm.tokenizer, held.prompts, held.answers, verifier.kind, max_tokens=max_tokens)
    # Held-out drift: the trained policy samples answers to prompts it never trained on; KL over full distributions.
    probe_prompts = held.prompts[: cfg.probe_prompts]
    ref = reference if reference is not None else load_model(start_dir).model
    drift = policy_drift(lm.model, ref, lm.tokenizer, probe_prompts, max_tokens=rl.max_completion_length, seed=tc.seed)
    model_dir = save_model(lm.model, start_dir, out / "model")
    facts = {
        **drift,
        "verified_before": before,
        "verified_after": after,
        "heldout": held.name,
        "heldout_tasks": len(held.prompts),
        "steps": result.steps_done,
        "stopped": result.stopped,
        "reason": result.reason,
    }
    write_json(out / "rlvr.json", facts)
    first, last = (result.history[0], result.history[-1]) if result.history else ({}, {})
    log.info(
        f"round {round} held-out ({held.name}): verified rate {before:.3f} -> {after:.3f}, KL {drift['kl']:.4f}, "
        f"entropy {drift['entropy']:.3f}" + (f"; stopped early: {result.reason}" if result.reason else "")
    )
    return RLVRResult(
        stage=RLVR_STAGES.name(5, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        metrics_path=str(out / "metrics.parquet"),
        steps=result.steps_done,
        stopped=result.stopped,
        reason=result.reason,
        kl=drift["kl"],
        entropy=drift["entropy"],
        verified_before=before,
        verified_after=after,
        heldout_tasks=len(held.prompts),
        reward_first=first.get("reward", math.nan),
        reward_last=last.get("reward", math.nan),
        samples=int(history["samples"].sum()) if len(history) else 0,
    )
