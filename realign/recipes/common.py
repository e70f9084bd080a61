"""What every workflow's recipe shares: the base model, stage 1 (SFT), stage 6 (rounds), and loading YAML.

Recipes are pydantic models the Prefect UI renders as forms, loaded from the YAML files in deployments/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realign.model.tiny import TinyModelConfig
from realign.train.loop import TrainConfig


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A run's directory name under runs_root: a name, never a path (no separators, no leading dot, so no "..").
RUN_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
RunName = Annotated[str, Field(pattern=RUN_NAME_PATTERN)]


class ModelSpec(Recipe):
    """The base model: 'tiny' builds the tiny kit inside the run directory; otherwise a local dir or hub id."""

    path: str = Field("tiny", description="'tiny', a local model directory, or a Hugging Face hub id (online only).")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape and seed when path is 'tiny'.")


class SFTStageConfig(Recipe):
    """Stage 1: optional SFT of the base model before preference training."""

    enabled: bool = Field(True, description="Run SFT; when off, the base model is the stage-1 model.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            steps=300, batch_size=32, learning_rate=3e-4, warmup_steps=10, lora=None, metrics_every=50
        ),
        description="SFT optimisation (full fine-tuning by default for the tiny model).",
    )


class IterationConfig(Recipe):
    """Stage 6: on-policy rounds of stages 2-5."""

    max_rounds: int = Field(2, ge=1, le=50, description="Total rounds, counting the first (stages 2-5).")
    epsilon: float = Field(
        0.01,
        ge=-1,
        le=1,
        description="Continue only while the target metric improves by at least this (negative: go on if it drops).",
    )


def load_recipe(path: str | Path, cls: type[Recipe]) -> Recipe:
    """A `cls` recipe from YAML (optionally under a top-level `config:` key); ValueError naming file and bad fields."""
    import yaml  # only the CLI and tests load YAML

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read recipe: {exc}") from exc
    try:
        return cls.model_validate(data.get("config", data))
    except ValidationError as exc:
        lines = [f"{path}: invalid recipe:"]
        for e in exc.errors(include_url=False):
            lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
        raise ValueError("\n".join(lines)) from exc
