"""Stage 4 (SRF): reward model validation. Accuracy on pairs it never saw, the train/held-out gap, and (where the task
has a verifier) whether it ranks held-out samples the way the verifier does."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
from prefect import get_run_logger

from realign.eval.metrics import grouped_spearman, spearman
from realign.io import write_json
from realign.score.reward_model import load_reward_model
from realign.train.reward import score_pairs
from tasks.cache import stage_task
from tasks.srf import SRF_STAGES
from tasks.stages import StageResult, one_row


class RewardValidationResult(StageResult):
    val_accuracy: float
    train_accuracy: float
    train_val_gap: float
    val_margin: float
    val_loss: float
    n_val: int
    verifier_correlation: float  # Spearman of reward vs stage 2's scorer on held-out samples; NaN: not computable
    verifier_correlation_within: float  # the same within each prompt's samples (what GRPO's groups use), averaged
    correlation_samples: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"reward_model_validation": one_row(val_accuracy=self.val_accuracy, train_val_gap=self.train_val_gap)}

    def summary(self) -> dict:
        return {
            "reward_model_val_accuracy": self.val_accuracy,
            "reward_model_train_val_gap": self.train_val_gap,
            "reward_verifier_spearman": None if math.isnan(self.verifier_correlation) else self.verifier_correlation,
            "reward_verifier_spearman_within_prompt": (
                None if math.isnan(self.verifier_correlation_within) else self.verifier_correlation_within
            ),
        }


@stage_task("4-reward-model-validation")
def validate_reward_model(
    reward_model_dir: str,
    pairs_path: str,
    split_path: str,
    completions_path: str,
    run_dir: str,
    max_samples: int = 512,
    round: int = 1,
) -> RewardValidationResult:
    """completions_path: stage 2's graded samples (GRPO rows, scores from the verifier when the scorer is one)."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SRF_STAGES.dir(run_dir, 4, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    split = json.loads(open(split_path).read())
    rm = load_reward_model(reward_model_dir)
    val = score_pairs(rm, [pairs[i] for i in split["val"]])
    train = score_pairs(rm, [pairs[i] for i in split["train"]])
    gap = train["accuracy"] - val["accuracy"]

    # Samples of held-out prompts only: the reward model saw none of their pairs.
    held = {pairs[i]["prompt"] for i in split["val"]}
    rows = [json.loads(line) for line in open(completions_path) if line.strip()]
    samples = [(r["prompt"], s["text"], s["score"]) for r in rows if r["prompt"] in held for s in r["responses"]]
    samples = samples[:max_samples]
    rho, within, prompts_used, n = math.nan, math.nan, 0, 0
    if samples:
        rewards = rm.reward([p for p, _, _ in samples], [t for _, t, _ in samples])
        scores = [s for _, _, s in samples]
        rho, n = spearman(rewards, scores), len(samples)
        within, prompts_used = grouped_spearman([p for p, _, _ in samples], rewards, scores)
    report = {
        "val": val,
        "train": train,
        "train_val_gap": gap,
        "verifier_spearman": rho,
        "verifier_spearman_within_prompt": within,
        "correlation_prompts": prompts_used,
        "correlation_samples": n,
        "note": "verifier_spearman: rank correlation of reward-model scores and stage 2's scores on held-out prompts' "
        "samples; _within_prompt: the mean of it over each prompt's own samples (GRPO compares within a prompt)",
    }
    write_json(out / "reward_model_validation.json", report)
    log.info(
        f"reward model held-out: accuracy {val['accuracy']:.3f} on {val['pairs']} pairs "
        f"(train {train['accuracy']:.3f}, gap {gap:+.3f}); rank correlation with stage 2's scorer on {n} "
        "held-out samples: "
        + (f"{rho:.3f} (within a prompt {within:.3f}, {prompts_used} prompts)" if n else "not computable")
    )
    return RewardValidationResult(
        stage=SRF_STAGES.name(4, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        val_accuracy=val["accuracy"],
        train_accuracy=train["accuracy"],
        train_val_gap=gap,
        val_margin=val["margin"],
        val_loss=val["loss"],
        n_val=val["pairs"],
        verifier_correlation=rho,
        verifier_correlation_within=within,
        correlation_samples=n,
    )
