"""The abliteration workflow's recipe: a model with a behaviour, the direction that carries it, the direction
projected out of the weights, and the measured effect (with activation steering measured beside it).

Stage 1 makes the behaviour on the embedded demo (SFT of the tiny model: marked prompts answered with a refusal) or
takes a model that has it (data.source 'files'); stage 2 extracts the direction; stage 3 abliterates; stage 7
measures the behaviour rate before/after, capability retention and KL on harmless prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from realign.recipes.common import (
    Distributed,
    EvalMaxTokens,
    ModelSpec,
    Recipe,
    RunName,
    input_problems,
    load_recipe,
)
from realign.steer.behaviour import REFUSAL
from realign.thresholds import EvaluationSection, OptimizationSection, ThresholdsConfig, WorkflowThresholds, _Strict
from realign.train.loop import TrainConfig


class BehaviourDataConfig(Recipe):
    """Where the prompts come from: the embedded demo, or your files."""

    source: Literal["embedded", "files"] = Field(
        "embedded",
        description="embedded: digit skills, marked prompts refused (realign.steer.behaviour); files: the paths below.",
    )
    harmful: str | None = Field(
        None, description="files: JSONL ('prompt' per line) of prompts that show the behaviour: the direction's."
    )
    harmless: str | None = Field(None, description="files: JSONL of prompts that do not (same format).")
    eval_harmful: str | None = Field(
        None, description="files: held-out prompts showing the behaviour, for its rate before and after (JSONL)."
    )
    benchmarks: list[str] = Field(
        [], description="files: capability benchmarks, JSONL with 'prompt' and 'answer' (exact match after trim)."
    )
    behaviour_prefixes: list[str] = Field(
        [REFUSAL],
        min_length=1,
        description="An answer starting with one of these shows the behaviour (e.g. refusal openings).",
    )
    skills: list[Literal["copy", "reverse", "count"]] = Field(
        ["copy", "reverse"], min_length=1, description="embedded: the digit skills (realign.data.demo) to keep."
    )
    n_sft: int = Field(2000, ge=10, le=1_000_000, description="embedded: stage-1 SFT rows per skill.")
    n_direction: int = Field(128, ge=4, le=100_000, description="embedded: direction prompts per skill (pairs).")
    n_eval: int = Field(100, ge=10, le=100_000, description="embedded: held-out items per skill and per kind.")
    max_digits: int = Field(6, ge=3, le=8, description="embedded: longest digit string.")
    marked_every: int = Field(
        4,
        ge=2,
        le=100,
        description="embedded: every N-th SFT row is marked and refused (as many get the harmless one).",
    )
    seed: int = Field(0, ge=0, description="embedded: seed of the splits.")

    @model_validator(mode="after")
    def _files_given(self) -> "BehaviourDataConfig":
        if self.source == "files":
            missing = [f for f in ("harmful", "harmless", "eval_harmful") if not getattr(self, f)]
            if missing or not self.benchmarks:
                need = [f"data.{f}" for f in missing] + ([] if self.benchmarks else ["data.benchmarks"])
                raise ValueError(f"data.source 'files' needs {', '.join(need)}")
        return self

    def files(self) -> list[str]:
        """The local files this data names (their contents are part of the stages' cache keys)."""
        return [p for p in (self.harmful, self.harmless, self.eval_harmful, *self.benchmarks) if p]


class BehaviourSFTConfig(Recipe):
    """Stage 1 (embedded demo): SFT that gives the tiny model the behaviour and the skills."""

    enabled: bool = Field(True, description="Train; off: the base model is the stage-1 model (files: it has it).")
    train: TrainConfig = Field(
        TrainConfig(steps=300, batch_size=32, learning_rate=3e-4, warmup_steps=10, lora=None, metrics_every=50),
        description="SFT optimisation (full fine-tuning of the tiny model).",
    )


class DirectionStageConfig(Recipe):
    """Stage 2: the direction (mean activation difference at the last prompt token)."""

    layer: int | None = Field(None, ge=0, le=1000, description="Use this block's direction; None: best separation.")
    layers: list[int] | None = Field(None, description="Blocks to measure (None: all).")
    heldout_fraction: float = Field(
        0.25, ge=0.05, le=0.5, description="Share of each prompt set held out to measure separation and choose."
    )
    seed: int = Field(0, ge=0, description="Seed of the held-out split.")
    projected: bool = Field(
        True,
        description="Take the harmless prompts' mean activation out of the direction (projected abliteration): on "
        "the demo it kept more of the skills than the plain mean difference.",
    )


class AbliterationStageConfig(Recipe):
    """Stage 3: what is orthogonalised."""

    embeddings: bool = Field(
        False,
        description="Also orthogonalise the token embeddings (with tied embeddings, the output head too). Off by "
        "default: on the demo it removed the behaviour as well and cost more capability.",
    )


class SteeringEvalConfig(Recipe):
    """Stage 7: activation steering measured beside abliteration (no weights changed)."""

    scale: float = Field(
        -1.0,
        ge=-20,
        le=20,
        description="Add scale * (mean difference) at the chosen layer: -1 moves the behaviour prompts' mean onto "
        "the others'; 0 skips the steering measurement.",
    )


class SteeringThresholds(_Strict):
    """The abliteration workflow's own gates."""

    min_behaviour_rate_before: float = Field(
        0.5, ge=0.0, le=1.0, description="Stage 1: the stage-1 model must show the behaviour on at least this share."
    )
    min_direction_accuracy: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Stage 2: held-out accuracy of the chosen direction's threshold (behaviour vs not) at least this.",
    )
    max_relative_projection: float = Field(
        1e-5,
        gt=0.0,
        le=1.0,
        description="Stage 3: largest |r . W| of the orthogonalised writers (float32, before the cast back to the "
        "model's dtype) over the largest |W|; the saved weights' value is reported beside it (bf16/fp16 rounding).",
    )
    max_behaviour_rate_after: float = Field(
        0.1, ge=0.0, le=1.0, description="Stage 7: the abliterated model's behaviour rate must be at most this."
    )
    max_behaviour_change_ci_high: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="Stage 7: the upper end of the 95% interval of rate after - before must be below this (a drop "
        "outside noise).",
    )


class AbliterationTiers(_Strict):
    """No tier bands: every abliteration gate is a bound (HIGH or REJECT)."""


class AbliterationThresholds(WorkflowThresholds):
    """The abliteration workflow's gates: retention and KL (shared sections) and its own."""

    optimization: OptimizationSection
    evaluation: EvaluationSection
    steering: SteeringThresholds = Field(SteeringThresholds(), description="Stages 1, 2, 3 and 7 (behaviour).")
    tiers: AbliterationTiers = Field(AbliterationTiers(), description="No tier bands (bounds only).")

    def full(self) -> ThresholdsConfig:
        """The shared table the gates read (the steering section travels with each stage's suite arguments)."""
        return ThresholdsConfig.model_validate(self.model_dump(exclude={"steering"}))


class AbliterationWorkflowConfig(Recipe):
    """Everything an abliteration run needs. Every default is the embedded demo."""

    run_name: RunName | None = Field(None, description="Run directory name under runs_root; default: the run's name.")
    runs_root: str = Field("runs", description="Where run directories are created.")
    approve_medium: bool = Field(False, description="Pause for a person's approval in the UI when a gate is MEDIUM.")
    price_per_hour: float | None = Field(None, ge=0, description="Machine price per hour, for cost per example.")
    distributed: Distributed
    model: ModelSpec = Field(ModelSpec(), title="Model", description="Base model.")
    data: BehaviourDataConfig = Field(BehaviourDataConfig(), title="Data", description="Prompts and benchmarks.")
    sft: BehaviourSFTConfig = Field(
        BehaviourSFTConfig(), title="Stage 1 · Behaviour model", description="Stage 1 (embedded demo: make it)."
    )
    direction: DirectionStageConfig = Field(DirectionStageConfig(), title="Stage 2 · Direction", description="Stage 2.")
    abliteration: AbliterationStageConfig = Field(
        AbliterationStageConfig(), title="Stage 3 · Abliteration", description="Stage 3."
    )
    steering: SteeringEvalConfig = Field(
        SteeringEvalConfig(), title="Stage 7 · Steering", description="Stage 7: steering measured beside it."
    )
    eval_max_tokens: EvalMaxTokens
    thresholds: AbliterationThresholds = Field(
        AbliterationThresholds(), title="Thresholds", description="The gates' thresholds (this workflow's only)."
    )

    @model_validator(mode="after")
    def _inputs_exist(self) -> "AbliterationWorkflowConfig":
        from realign.data.datasets import DataConfig

        problems = input_problems(self.model, DataConfig())
        if self.data.source == "files":
            problems += [
                f"data: {p} does not exist or is not a file" for p in self.data.files() if not Path(p).is_file()
            ]
            if self.model.path == "tiny":
                problems.append("model.path: files name prompts for your model; give its directory (not 'tiny')")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_abliterate_recipe(path: str | Path) -> AbliterationWorkflowConfig:
    """An AbliterationWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    return load_recipe(path, AbliterationWorkflowConfig)  # type: ignore[return-value]
