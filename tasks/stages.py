"""What every stage task shares: its place in its workflow's stage table and the shape of its result.

Stages 1, 6 and 7 belong to every workflow; stages 2-5 are each workflow's own, so a workflow's
directories and UI names read as that workflow (05_rlvr_optimization/, 5-rlvr-optimization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

SHARED = {1: "sft_preparation", 6: "iterative_training", 7: "evaluation"}


@dataclass(frozen=True)
class StageTable:
    """A workflow's seven stages: the shared 1, 6 and 7 plus its own 2-5 (directory and UI names)."""

    workflow: str
    own: Mapping[int, str] = field(default_factory=dict)

    def slug(self, n: int) -> str:
        return SHARED[n] if n in SHARED else self.own[n]

    def name(self, n: int, round: int = 1) -> str:
        """UI name, e.g. '5-dpo-optimization', '2-preference-data-round2'."""
        return f"{n}-{self.slug(n).replace('_', '-')}" + (f"-round{round}" if round > 1 else "")

    def dir(self, run_dir: str | Path, n: int, round: int = 1) -> Path:
        """RUN_DIR/NN_stage[_roundR], created."""
        d = Path(run_dir) / (f"{n:02d}_{self.slug(n)}" + (f"_round{round}" if round > 1 else ""))
        d.mkdir(parents=True, exist_ok=True)
        return d


SHARED_STAGES = StageTable("shared")


def one_row(**metrics: Any) -> pd.DataFrame:
    """A one-row metric table, the shape the metric suites check."""
    return pd.DataFrame({k: [v] for k, v in metrics.items()})


class StageResult(BaseModel):
    """What a stage task returns: which stage, where its outputs are, what it cost, and what its gate checks."""

    stage: str = Field(description="UI name, e.g. '5-dpo-optimization-round2'.")
    out_dir: str = Field(description="The stage's output directory in the run.")
    seconds: float = Field(description="Compute time of the stage.")

    def tables(self) -> dict[str, pd.DataFrame]:
        """Dataset name -> the table its gate suite (`<dataset>_suite`) checks."""
        return {}

    def suite_kwargs(self) -> dict[str, dict]:
        """Dataset name -> extra arguments of its suite (e.g. which benchmarks stage 1 recorded)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """What this stage adds to the run summary: numbers add up over rounds, lists concatenate."""
        return {}
