"""Stage 5 (SRF): RL fine-tuning against the learned reward (GRPO or RLOO), under a KL constraint and an entropy
range measured on held-out prompts after training."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, load_data
from realign.eval.probes import policy_drift
from realign.io import write_json, write_parquet
from realign.model.load import load_model, save_model
from realign.recipes.srf import RLStageConfig
from realign.score.combined import WeightedSum
from realign.score.reward_model import load_reward_model
from realign.score.verifiers import Verifier
from realign.train.loop import prepare_model, resume_key
from realign.train.rl import rl_train
from tasks.cache import stage_task
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.srf import SRF_STAGES
from tasks.stages import StageResult, one_row


class RLResult(StageResult):
    """model_dir: the trained policy. kl and entropy: on completions it sampled for held-out prompts after training."""

    model_dir: str
    metrics_path: str
    steps: int
    stopped: str
    reason: str
    kl: float
    entropy: float
    reward_first: float  # mean training reward of the first and last steps
    reward_last: float
    samples: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"rl_optimization": one_row(kl=self.kl, entropy=self.entropy)}

    def summary(self) -> dict:
        # held-out KL and entropy per round (lists: rounds must not add up); steps and samples add up
        return {
            "training_steps": self.steps,
            "training_metrics": [self.metrics_path],
            "rl_samples": self.samples,
            "rl_kl": [self.kl],
            "rl_entropy": [self.entropy],
        }


def step_line(row: dict, steps: int) -> str:
    return (
        f"step {row['step']}/{steps}: reward {row['reward']:.3f} (std {row['reward_std']:.3f}), "
        f"KL {row.get('kl', math.nan):.4f}, "
        f"entropy {row['entropy']:.3f}, clipped {row['clip_ratio/region_mean']:.3f}, "
        f"length {row['completions/mean_length']:.1f}, {row['samples_per_s']:.1f} samples/s"
    )


@stage_task("5-rl-fine-tuning", reads=("prompts", "eval_sets"))
def optimize_rl(
    cfg: RLStageConfig, start_dir: str, reward_model_dir: str, data: DataConfig, run_dir: str, round: int = 1
) -> RLResult:
    """RL from `start_dir` (also the frozen reference) on the data's prompts, rewarded by the reward model (and the
    verifier, by weight). KL(policy || reference) and entropy are measured afterwards on held-out prompts."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SRF_STAGES.dir(run_dir, 5, round)
    bundle = load_data(data)
    terms = []
    if cfg.reward_model_weight:
        terms.append((load_reward_model(reward_model_dir), cfg.reward_model_weight))
    if cfg.verifier_weight:
        terms.append((Verifier(bundle.answers, mode="graded"), cfg.verifier_weight))
    reward = WeightedSum(terms)
    rl, tc = cfg.rl, cfg.rl.train
    lm = load_model(start_dir)
    reference = None if tc.lora is not None else load_model(start_dir).model  # LoRA: the base under the adapters
    prepare_model(lm.model, tc)
    log.info(
        f"round {round}: {rl.estimator} on {len(bundle.prompts)} prompts, {tc.steps} steps x {tc.batch_size} prompts x "
        f"{rl.num_generations} samples, reward {reward.name}, beta {rl.beta}"
    )

    bar = Progress(SRF_STAGES.name(5, round), f"round {round} RL step", tc.steps)

    def progress(row):
        bar.update(row["step"], training_line(row), row)
        if row["step"] % max(1, tc.steps // 10) == 0 or row["step"] == tc.steps:
            log.info(f"round {round} " + step_line(row, tc.steps))

    key = resume_key(repr(bundle.prompts), start_dir, reward_model_dir, cfg.model_dump_json())
    if Path(reward_model_dir).is_dir():
        key = resume_key(key, (Path(reward_model_dir) / "score_head.safetensors").read_bytes())
    ranks = stage_distributed(run_dir)
    if ranks is not None:
        # Data parallel on the ranks (the recipe's `distributed:` section), from OUT/distributed/: every rank loads
        # the reward model and rewards the groups it samples; the held-out drift below is measured here.
        rows = [{"prompt": p, "answer": bundle.answers.get(p)} for p in bundle.prompts]
        result = train_on_ranks(
            "srf",
            start_dir,
            rows,
            tc,
            ranks,
            out / "distributed",
            rl=rl,
            reward_model=reward_model_dir if cfg.reward_model_weight else None,
            reward_model_weight=cfg.reward_model_weight,
            verifier_weight=cfg.verifier_weight,
            key=key,
        )
        load_trained(lm.model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], training_line(row), row)
    else:
        result = rl_train(
            lm.model,
            lm.tokenizer,
            bundle.prompts,
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
    if result.resumed_from:
        log.info(f"resumed from the checkpoint at step {result.resumed_from}")
    history = pd.DataFrame(result.history)
    history["round"] = round
    write_parquet(out / "metrics.parquet", history)
    # Held-out drift: the trained policy samples answers to prompts it never trained on; KL over full distributions.
    held = (bundle.dev or bundle.target).prompts[: cfg.probe_prompts]
    ref = reference if reference is not None else load_model(start_dir).model
    drift = policy_drift(lm.model, ref, lm.tokenizer, held, max_tokens=rl.max_completion_length, seed=tc.seed)
    model_dir = save_model(lm.model, start_dir, out / "model")
    facts = {
        **drift,
        "steps": result.steps_done,
        "stopped": result.stopped,
        "reason": result.reason,
        "reward": reward.name,
        "probe_prompts": len(held),
    }
    write_json(out / "rl.json", facts)
    first, last = (result.history[0], result.history[-1]) if result.history else ({}, {})
    log.info(
        f"round {round} held-out: KL {drift['kl']:.4f}, entropy {drift['entropy']:.3f} on {len(held)} prompts"
        + (f"; stopped early: {result.reason}" if result.reason else "")
    )
    return RLResult(
        stage=SRF_STAGES.name(5, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        metrics_path=str(out / "metrics.parquet"),
        steps=result.steps_done,
        stopped=result.stopped,
        reason=result.reason,
        kl=drift["kl"],
        entropy=drift["entropy"],
        reward_first=first.get("reward", math.nan),
        reward_last=last.get("reward", math.nan),
        samples=int(history["samples"].sum()) if len(history) else 0,
    )
