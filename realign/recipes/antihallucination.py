"""The anti-hallucination workflow's recipe: grounded data (stage 2), citation training (3), hallucination detection
and preference pairs from the model's own samples (4), preference optimisation on them (5), plus the common parts.
The embedded demo sets its own values in deployments/antihallucination-demo.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from realign.data.datasets import GroundedDataConfig
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
from realign.recipes.dpo import DPOStageConfig
from realign.thresholds import GroundedThresholds
from realign.train.loop import TrainConfig
from realign.train.objectives import PreferenceLossConfig


class CitationStageConfig(Recipe):
    """Stage 3: SFT on cited answers and abstentions (with the capability rows of data.n_prompts_benchmark)."""

    train: TrainConfig = Field(
        TrainConfig(steps=200, batch_size=32, learning_rate=5e-4, warmup_steps=10, lora=None, metrics_every=50),
        description="SFT optimisation (full fine-tuning of the tiny model; LoRA for large models).",
    )


class DetectionStageConfig(Recipe):
    """Stage 4: the hallucination rate on held-out questions, and preference pairs from the model's own samples."""

    generation: GenerationConfig = Field(
        GenerationConfig(n=4, batch_size=128, temperature=1.0, max_tokens=12),
        description="Sampling of the training questions: n answers per question.",
    )
    max_items: int = Field(
        1000, ge=1, le=10_000_000, description="At most this many training questions are sampled (the first ones)."
    )
    reference_when_none_right: bool = Field(
        True,
        description="When no sample of a question is right, the reference answer is the chosen one (else no pair).",
    )


class AntiHallucinationWorkflowConfig(WorkflowRecipe):
    """Everything an anti-hallucination run needs: grounded questions, citation training, then preference
    optimisation against the model's own hallucinations."""

    data: GroundedDataConfig = Field(
        GroundedDataConfig(),
        title="Data",
        description="Grounded questions (embedded world or files), SFT data, eval sets.",
    )
    sft: SFTStageConfig = Field(SFTStageConfig(), title="Stage 1 · SFT preparation", description="Stage 1.")
    citation: CitationStageConfig = Field(
        CitationStageConfig(), title="Stage 3 · Citation training", description="Stage 3: citation training."
    )
    detection: DetectionStageConfig = Field(
        DetectionStageConfig(),
        title="Stage 4 · Hallucination detection",
        description="Stage 4: hallucination detection.",
    )
    optimization: DPOStageConfig = Field(
        DPOStageConfig(
            loss=PreferenceLossConfig(beta=0.1, rpo_alpha=1.0),
            train=TrainConfig(steps=60, batch_size=16, learning_rate=1e-5, warmup_steps=5, lora=None, metrics_every=10),
        ),
        title="Stage 5 · Grounding optimization",
        description="Stage 5: preference optimisation on the pairs of stage 4.",
    )
    iterations: IterationConfig = Field(
        IterationConfig(max_rounds=1), title="Stage 6 · Iterative training", description="Stage 6."
    )
    control: bool = Field(
        True,
        title="Stage 7 · Control arm",
        description="Stage 7: also train the citation-trained model with continued SFT on the chosen answers for as "
        "many steps as stage 5, as a control.",
    )
    eval_max_tokens: EvalMaxTokens
    fuse_final: FuseFinal
    thresholds: GroundedThresholds = Field(
        GroundedThresholds(),
        title="Thresholds",
        description="The gates' thresholds and tier bands (this workflow's only).",
    )


def load_antihallucination_recipe(path: str | Path) -> AntiHallucinationWorkflowConfig:
    """An AntiHallucinationWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    return load_recipe(path, AntiHallucinationWorkflowConfig)  # type: ignore[return-value]
