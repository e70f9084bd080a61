"""The DPO workflow's recipe: stages 2-5 (pairs, reference, reward model, DPO) plus the common parts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from realign.data.datasets import DataConfig
from realign.recipes.common import (
    EvalMaxTokens,
    FuseFinal,
    IterationConfig,
    Recipe,
    SFTStageConfig,
    WorkflowRecipe,
    load_recipe,
)
from realign.score.sampling import PairsConfig
from realign.thresholds import DPOThresholds
from realign.train.loop import TrainConfig
from realign.train.objectives import PreferenceLossConfig


class RewardModelStageConfig(Recipe):
    """Stage 4: the reward model that checks the preference signal is learnable."""

    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of pairs held out for accuracy.")
    steps: int = Field(300, ge=1, description="Full-batch Bradley-Terry steps of the linear head.")
    learning_rate: float = Field(0.05, gt=0, description="Head learning rate (features are standardised).")
    pooling: Literal["mean", "last"] = Field("mean", description="Pool completion hidden states by mean or last token.")


class DPOStageConfig(Recipe):
    """Stage 5: preference optimisation."""

    loss: PreferenceLossConfig = Field(
        PreferenceLossConfig(beta=1.0, rpo_alpha=1.0),
        description="Objective (sigmoid DPO + RPO NLL by default; chosen by measurement on the demo).",
    )
    train: TrainConfig = Field(
        TrainConfig(
            steps=120,
            batch_size=16,
            learning_rate=5e-6,
            warmup_steps=5,
            lora=None,
            checkpoint_every=40,
            metrics_every=10,
        ),
        description="Optimisation (full fine-tuning of the tiny model by default; LoRA for large models).",
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of pairs held out for implicit reward accuracy and KL."
    )
    kl_cache_max_gb: float = Field(
        4.0,
        ge=0,
        le=1024,
        description="Stage 3 also caches the reference's final hidden states at every completion token when they "
        "take at most this many GB (completion tokens x hidden size x 4 bytes; the tiny demo: under 10 MB). Training "
        "then measures the exact per-step KL from them through the reference's output head, at the completion "
        "positions only, instead of running the reference over every position at each measured step. Stage 5 holds "
        "the cache in memory. Models whose logits are not their head over their hidden states (soft-capped or "
        "scaled logits) are measured with the reference forward instead, with a warning. 0: never.",
    )


class DPOWorkflowConfig(WorkflowRecipe):
    """Everything a DPO run needs. Every default is the embedded demo."""

    data: DataConfig = Field(DataConfig(), title="Data", description="Prompts, SFT data and evaluation sets.")
    sft: SFTStageConfig = Field(SFTStageConfig(), title="Stage 1 · SFT preparation", description="Stage 1.")
    pairs: PairsConfig = Field(PairsConfig(), title="Stage 2 · Preference data", description="Stage 2.")
    reward_model: RewardModelStageConfig = Field(
        RewardModelStageConfig(), title="Stage 4 · Preference modeling", description="Stage 4."
    )
    dpo: DPOStageConfig = Field(DPOStageConfig(), title="Stage 5 · DPO optimization", description="Stage 5.")
    iterations: IterationConfig = Field(IterationConfig(), title="Stage 6 · Iterative training", description="Stage 6.")
    control: bool = Field(
        True,
        title="Stage 7 · Control arm",
        description="Stage 7: also train continued SFT on the chosen answers for the same steps, as a control.",
    )
    eval_max_tokens: EvalMaxTokens
    fuse_final: FuseFinal
    thresholds: DPOThresholds = Field(
        DPOThresholds(), title="Thresholds", description="The gates' thresholds and tier bands (this workflow's only)."
    )


def load_dpo_recipe(path: str | Path) -> DPOWorkflowConfig:
    """A DPOWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    return load_recipe(path, DPOWorkflowConfig)  # type: ignore[return-value]
