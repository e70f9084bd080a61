"""The RLVR workflow's recipe (reinforcement learning with verifiable rewards): the verifier (stages 2-3), the
sampled and graded data (4), GRPO on the verifier's reward (5), plus the common parts. The embedded demo sets its
own values in deployments/rlvr-demo.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from realign.data.datasets import DataConfig
from realign.model.generate import GenerationConfig
from realign.recipes.common import (
    EvalMaxTokens,
    FuseFinal,
    IterationConfig,
    Recipe,
    SFTStageConfig,
    WorkflowRecipe,
    load_recipe,
)
from realign.score.verify import KINDS
from realign.thresholds import RLVRThresholds
from realign.train.loop import TrainConfig
from realign.train.rl import RLConfig


class VerifierConfig(Recipe):
    """Stages 2-3: which verifier judges answers (the workflow's tasks carry no code: no sandbox settings here)."""

    kind: str = Field(
        "auto",
        description="auto (math for numbers, exact for digit strings with a leading zero and text) | exact | numeric "
        "| math | regex. Code (python, with tests) is graded by `realign verify`.",
    )
    seed: int = Field(0, ge=0, description="Seed of the known-wrong answers made for each task.")

    @model_validator(mode="after")
    def _known(self) -> "VerifierConfig":
        if self.kind not in KINDS:
            raise ValueError(f"verifier.kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "python":
            raise ValueError(
                "verifier.kind 'python': the workflow's tasks are prompt/answer rows (data.prompts), which carry no "
                "tests; grade code responses with `realign verify FILE --verifier python` (RLVR rows with tests)"
            )
        return self


class SamplesConfig(Recipe):
    """Stage 4: samples per task from the current model, graded by the verifier."""

    generation: GenerationConfig = Field(
        GenerationConfig(n=8, batch_size=128, temperature=1.0, max_tokens=16),
        description="Sampling: n samples per task.",
    )
    max_tasks: int = Field(
        2000, ge=1, le=10_000_000, description="At most this many tasks are sampled (the first ones, in order)."
    )


class RLVRStageConfig(Recipe):
    """Stage 5: GRPO on the verifier's reward, KL and verified rate measured on held-out tasks."""

    rl: RLConfig = Field(
        RLConfig(
            num_generations=8,
            max_completion_length=16,
            beta=0.04,
            train=TrainConfig(steps=100, batch_size=8, learning_rate=1e-5, lora=None, checkpoint_every=20),
        ),
        description="The RL loop: estimator, group size, KL, clipping, optimiser.",
    )
    probe_prompts: int = Field(
        64, ge=1, le=10_000, description="Held-out prompts sampled after training to measure KL and entropy."
    )


class RLVRWorkflowConfig(WorkflowRecipe):
    """Everything an RLVR run needs: a trusted verifier, graded samples, then GRPO on the verifier's reward."""

    data: DataConfig = Field(
        DataConfig(), title="Data", description="Tasks (prompts with reference answers), SFT data, eval sets."
    )
    sft: SFTStageConfig = Field(SFTStageConfig(), title="Stage 1 · SFT preparation", description="Stage 1.")
    verifier: VerifierConfig = Field(
        VerifierConfig(), title="Stages 2-3 · Verifier", description="Stages 2-3: the verifier."
    )
    samples: SamplesConfig = Field(
        SamplesConfig(), title="Stage 4 · Graded samples", description="Stage 4: graded samples."
    )
    rl: RLVRStageConfig = Field(RLVRStageConfig(), title="Stage 5 · GRPO", description="Stage 5: GRPO.")
    iterations: IterationConfig = Field(
        IterationConfig(max_rounds=1), title="Stage 6 · Iterative training", description="Stage 6."
    )
    control: bool = Field(
        True,
        title="Stage 7 · Control arm",
        description="Stage 7: also train continued SFT on the verified-correct samples for as many steps, as a "
        "control (rejection-sampling fine-tuning).",
    )
    eval_max_tokens: EvalMaxTokens
    fuse_final: FuseFinal
    thresholds: RLVRThresholds = Field(
        RLVRThresholds(), title="Thresholds", description="The gates' thresholds and tier bands (this workflow's only)."
    )


def load_rlvr_recipe(path: str | Path) -> RLVRWorkflowConfig:
    """An RLVRWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    return load_recipe(path, RLVRWorkflowConfig)  # type: ignore[return-value]
