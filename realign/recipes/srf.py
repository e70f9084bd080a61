"""The SRF workflow's recipe (Supervised Reward Fine-tuning): stage 2's pairs, stage 3-4's reward model, stage 5's RL,
plus the common parts. Every default is the seeds' number or TRL's; the embedded demo sets its own in
deployments/srf-demo.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

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
from realign.thresholds import SRFThresholds
from realign.train.reward import RewardTrainingConfig
from realign.train.rl import RLConfig


class RewardModelStageConfig(Recipe):
    """Stages 3-4: the reward model trained on the pairs, and checked on pairs it never saw."""

    training: RewardTrainingConfig = Field(RewardTrainingConfig(), description="Stage 3: Bradley-Terry training.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of pairs held out for stage 4's validation.")
    correlation_samples: int = Field(
        512, ge=0, le=100_000, description="Stage 4: held-out samples scored by both reward model and verifier."
    )


class RLStageConfig(Recipe):
    """Stage 5: RL fine-tuning against the learned reward (plus, optionally, the verifier)."""

    rl: RLConfig = Field(RLConfig(), description="The RL loop: estimator, group size, KL, clipping, optimiser.")
    reward_model_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the reward model's score.")
    verifier_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="Weight of the verifier's graded score (needs known answers)."
    )
    probe_prompts: int = Field(
        64, ge=1, le=10_000, description="Held-out prompts sampled after training to measure KL and entropy."
    )

    @model_validator(mode="after")
    def _some_reward(self) -> "RLStageConfig":
        if not self.reward_model_weight and not self.verifier_weight:
            raise ValueError("rl: reward_model_weight and verifier_weight are both 0: nothing to reward")
        return self


class SRFIterationConfig(IterationConfig):
    """Stage 6: rounds of RL; optionally a fresh reward model each round on the current policy's samples."""

    refresh_reward_model: bool = Field(
        False, description="Rounds 2+: sample new pairs from the current policy and retrain the reward model."
    )


class SRFWorkflowConfig(WorkflowRecipe):
    """Everything an SRF run needs: reward model from preference pairs, then RL against it."""

    data: DataConfig = Field(DataConfig(), title="Data", description="Prompts, SFT data and evaluation sets.")
    sft: SFTStageConfig = Field(SFTStageConfig(), title="Stage 1 · SFT preparation", description="Stage 1.")
    pairs: PairsConfig = Field(
        PairsConfig(),
        title="Stage 2 · Preference data",
        description="Stage 2: preference pairs (as the DPO workflow's).",
    )
    reward_model: RewardModelStageConfig = Field(
        RewardModelStageConfig(), title="Stages 3-4 · Reward model", description="Stages 3-4."
    )
    rl: RLStageConfig = Field(RLStageConfig(), title="Stage 5 · RL fine-tuning", description="Stage 5.")
    iterations: SRFIterationConfig = Field(
        SRFIterationConfig(max_rounds=1), title="Stage 6 · Iterative training", description="Stage 6."
    )
    control: bool = Field(
        True,
        title="Stage 7 · Control arm",
        description="Stage 7: also train continued SFT on the chosen answers for as many steps, as a control.",
    )
    eval_max_tokens: EvalMaxTokens
    fuse_final: FuseFinal
    thresholds: SRFThresholds = Field(
        SRFThresholds(), title="Thresholds", description="The gates' thresholds and tier bands (this workflow's only)."
    )


def load_srf_recipe(path: str | Path) -> SRFWorkflowConfig:
    """An SRFWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    return load_recipe(path, SRFWorkflowConfig)  # type: ignore[return-value]
