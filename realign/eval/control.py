"""The control arm of stage 7: the same start model, optimiser settings and number of steps, trained with plain SFT.

If the workflow's method does not beat this control, its gain came from more training on the same answers,
not from the method (e.g. DPO vs continued SFT on the chosen answers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from realign.data.datasets import TrainingFile
from realign.model.load import LoadedModel, load_model
from realign.train.batches import sft_batches
from realign.train.loop import TrainConfig, prepare_model, train
from realign.train.objectives import sft_loss


class ControlArm(BaseModel):
    """What the control trains on, and how."""

    model_config = ConfigDict(extra="forbid")

    data: TrainingFile = Field(description="Training rows; preference rows train on their chosen answer.")
    train: TrainConfig = Field(description="Optimiser settings of the workflow's own training (steps replaced below).")
    steps: int = Field(ge=1, description="Optimizer steps: as many as the workflow's training took in all rounds.")
    description: str = Field("continued SFT on the chosen answers", description="What the control is, for the report.")
    start_dir: str | None = Field(
        None, description="The model the control starts from; None: the stage-1 model the workflow started from."
    )


def train_control(start_dir: str, arm: ControlArm) -> LoadedModel:
    """Train the control from `arm.start_dir` (default `start_dir`) and return it (nothing is written: the control is
    measured, not shipped)."""
    lm = load_model(arm.start_dir or start_dir)
    cfg = arm.train.model_copy(update={"steps": arm.steps, "checkpoint_every": 0, "kl_limit": None})
    prepare_model(lm.model, cfg)
    train(lm.model, sft_loss, sft_batches(lm.tokenizer, arm.data.examples(), cfg), cfg)
    return lm
