"""Training a reward model as a model: a scalar head on the causal LM, Bradley-Terry loss, LoRA or full, through the
same loop as SFT and DPO (checkpoints, exact resume), and its metrics on pairs with TRL's names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from realign.score.reward_model import reward_model_batches, reward_model_loss, sequence_reward_model
from realign.train.loop import TrainConfig, TrainResult, prepare_model, train


class RewardTrainingConfig(BaseModel):
    """How the reward model is trained (TRL RewardTrainer's loss; its metric names)."""

    model_config = ConfigDict(extra="forbid")

    train: TrainConfig = Field(
        TrainConfig(steps=150, batch_size=16, learning_rate=1e-4, warmup_steps=10, lora=None, checkpoint_every=50),
        description="Optimisation of backbone (full or LoRA) and head; batch_size counts pairs.",
    )
    margin_scale: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="Bradley-Terry margin = this * the pair's score gap (TRL's `margin` column); 0: no margin.",
    )
    head_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the head's N(0, 0.02) initialisation.")


def reward_model_to_train(lm_model, cfg: RewardTrainingConfig):
    """`lm_model` with the scalar head (seeded), prepared for `cfg.train` (LoRA or full), the head trainable: the module
    fit_reward_model trains, and what a distributed run's checkpoint loads into."""
    model = sequence_reward_model(lm_model, seed=cfg.head_seed)
    prepare_model(model, cfg.train)
    model.score.unfreeze()  # the head always trains, also when LoRA freezes the backbone
    return model


def fit_reward_model(
    lm_model,
    tokenizer,
    pairs: Sequence[dict],
    cfg: RewardTrainingConfig,
    *,
    out_dir: str | Path | None = None,
    callback: Callable[[dict], None] | None = None,
    resume_key: str | None = None,
    parallel=None,
):
    """Wrap `lm_model` with a scalar head, train it on `pairs` ({prompt, chosen, rejected[, chosen_score,
    rejected_score]}); returns (the reward model module, TrainResult). Per-step metrics: loss, accuracy, margin.
    parallel: realign.train.distributed.DataParallel(group, layout="pairs", weight_by="examples") to train across
    `mlx.launch` ranks (the loss is a mean over pairs)."""
    if not pairs:
        raise ValueError("no preference pairs to train the reward model on")
    model = reward_model_to_train(lm_model, cfg)
    batches = reward_model_batches(tokenizer, list(pairs), cfg.train, margin_scale=cfg.margin_scale)
    result: TrainResult = train(
        model,
        reward_model_loss,
        batches,
        cfg.train,
        out_dir=out_dir,
        callback=callback,
        resume_key=resume_key,
        measure=None,  # rewards, not next-token distributions: no KL or entropy to measure
        parallel=parallel,
    )
    return model, result


def pair_metrics(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> dict[str, float]:
    """accuracy (share with r_c > r_r, ties wrong), margin (mean r_c - r_r), loss (mean -log sigmoid(r_c - r_r))
    over pairs, in float64; NaN for no pairs."""
    c, r = np.asarray(chosen_rewards, dtype=np.float64), np.asarray(rejected_rewards, dtype=np.float64)
    if c.size == 0:
        return {"accuracy": float("nan"), "margin": float("nan"), "loss": float("nan"), "pairs": 0}
    d = c - r
    return {
        "accuracy": float(np.mean(d > 0)),
        "margin": float(np.mean(d)),
        "loss": float(np.mean(np.logaddexp(0.0, -d))),  # -log sigmoid(d), stable for large |d|
        "pairs": int(c.size),
    }


def score_pairs(scorer, pairs: Sequence[dict]) -> dict[str, float]:
    """pair_metrics of a reward model scorer (`reward(prompts, completions)`) on pairs it is handed."""
    prompts = [p["prompt"] for p in pairs]
    rc = scorer.reward(prompts, [p["chosen"] for p in pairs]) if pairs else []
    rr = scorer.reward(prompts, [p["rejected"] for p in pairs]) if pairs else []
    return pair_metrics(rc, rr)
