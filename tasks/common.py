"""What every stage task shares: its directory in the run, its cache policy, logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

# A stage is re-run only when its inputs or its code change: retrying a failed run
# re-executes the failed stage and those after it, and reads earlier results from storage.
STAGE_CACHE = INPUTS + TASK_SOURCE

STAGES = {
    1: "sft_preparation",
    2: "preference_data",
    3: "model_initialization",
    4: "preference_modeling",
    5: "dpo_optimization",
    6: "iterative_training",
    7: "evaluation",
}


def stage_name(n: int) -> str:
    """UI name of stage n, e.g. '1-sft-preparation'."""
    return f"{n}-{STAGES[n].replace('_', '-')}"


def stage_dir(run_dir: str | Path, n: int, suffix: str = "") -> Path:
    """RUN_DIR/NN_stage[suffix], created."""
    d = Path(run_dir) / f"{n:02d}_{STAGES[n]}{suffix}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: Path, data: dict) -> Path:
    """Atomic JSON write; NaN becomes null (JSON has no NaN), so 'not computed' stays visible."""
    from realign.formats import atomic_path

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    with atomic_path(path, "w") as fh:
        fh.write(json.dumps(clean(data), indent=2, default=str))
    return path
