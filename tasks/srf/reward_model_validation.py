"""Stage 4 (SRF): reward model validation. Accuracy on pairs it never saw, the train/held-out gap, and (where the task
has a verifier: prompts with known answers) whether it ranks held-out samples the way the verifier does."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, load_data
from realign.eval.metrics import grouped_spearman, spearman
from realign.io import write_json
from realign.score.reward_model import load_reward_model
from realign.score.verifiers import Verifier
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
    verifier_correlation: float  # Spearman of reward vs the verifier on held-out samples; NaN: no verifier
    verifier_correlation_within: float  # the same within each prompt's samples (what GRPO's groups use), averaged
    correlation_samples: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"reward_model_validation": one_row(val_accuracy=self.val_accuracy, train_val_gap=self.train_val_gap)}

    def summary(self) -> dict:
        # Lists, one value per reward model trained (rounds with refresh_reward_model), so rounds never add up.
        def known(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "reward_model_val_accuracy": [self.val_accuracy],
            "reward_model_train_val_gap": [self.train_val_gap],
            "reward_verifier_spearman": [known(self.verifier_correlation)],
            "reward_verifier_spearman_within_prompt": [known(self.verifier_correlation_within)],
        }


@stage_task("4-reward-model-validation", reads=("prompts",))
def validate_reward_model(
    reward_model_dir: str,
    pairs_path: str,
    split_path: str,
    completions_path: str,
    data: DataConfig,
    run_dir: str,
    max_samples: int = 512,
    round: int = 1,
) -> RewardValidationResult:
    """completions_path: stage 2's samples (GRPO rows); they are graded again here by the verifier (the prompts' known
    answers), whatever scorer stage 2 used, so the correlation is with the verifier or not reported."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SRF_STAGES.dir(run_dir, 4, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    split = json.loads(Path(split_path).read_text())
    if split.get("pairs_path") != pairs_path:
        raise ValueError(f"{split_path} splits {split.get('pairs_path')}, not {pairs_path}: re-run stage 3")
    rm = load_reward_model(reward_model_dir)
    val = score_pairs(rm, [pairs[i] for i in split["val"]])
    train = score_pairs(rm, [pairs[i] for i in split["train"]])
    gap = train["accuracy"] - val["accuracy"]

    # Samples of held-out prompts with a known answer only: the reward model saw none of their pairs.
    answers = load_data(data).answers
    held = {pairs[i]["prompt"] for i in split["val"]} & set(answers)
    with open(completions_path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    samples = [(r["prompt"], s["text"]) for r in rows if r["prompt"] in held for s in r["responses"]][:max_samples]
    rho, within, prompts_used, n = math.nan, math.nan, 0, 0
    if samples:
        prompts, texts = [p for p, _ in samples], [t for _, t in samples]
        rewards = rm.reward(prompts, texts)
        verified = Verifier(answers, mode="graded").score(prompts, texts)
        rho, n = spearman(rewards, verified), len(samples)
        within, prompts_used = grouped_spearman(prompts, rewards, verified)
    report = {
        "val": val,
        "train": train,
        "train_val_gap": gap,
        "verifier_spearman": rho,
        "verifier_spearman_within_prompt": within,
        "correlation_prompts": prompts_used,
        "correlation_samples": n,
        "note": "verifier_spearman: rank correlation of reward-model scores and the verifier's graded scores on "
        "held-out prompts' samples (not computed without known answers); _within_prompt: its mean over each "
        "prompt's own samples (GRPO compares within a prompt)",
    }
    write_json(out / "reward_model_validation.json", report)
    log.info(
        f"reward model held-out: accuracy {val['accuracy']:.3f} on {val['pairs']} pairs "
        f"(train {train['accuracy']:.3f}, gap {gap:+.3f}); rank correlation with the verifier on {n} "
        "held-out samples: "
        + (
            f"{rho:.3f} (within a prompt {within:.3f}, {prompts_used} prompts)"
            if n
            else "not computed (no known answers)"
        )
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
