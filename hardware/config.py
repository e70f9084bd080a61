"""Hardware defaults (SPEC.md "Hardware rules", the seeds' benchmarks): machines, selection rules, split, environment.

Calibration (`realign calibrate`) measures these numbers on the user's own machines; the table is only the default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MachineProfile(_Strict):
    """One machine's measured capabilities (defaults from the seeds' benchmarks)."""

    name: str = Field(description="Profile name, e.g. 'm4-max'.")
    chip: str = Field(description="Chip as reported by the OS, e.g. 'Apple M4 Max'.")
    memory_gb: float = Field(gt=0, description="Unified memory in GB.")
    gflops: float = Field(gt=0, description="Measured matmul throughput in GFLOPS.")
    best_batch_size: int = Field(ge=1, le=4096, description="Smallest batch within 5% of peak throughput.")
    peak_examples_per_s: float = Field(gt=0, description="Peak examples/s of the batched workload at best_batch_size.")
    scoring_examples_per_s: float | None = Field(
        None, gt=0, description="Measured real-scoring examples/s (7B judge), if known."
    )
    work_pool: str = Field(description="Prefect work pool served by this machine's worker.")


def _default_machines() -> list[MachineProfile]:
    return [
        MachineProfile(
            name="m4-max",
            chip="Apple M4 Max",
            memory_gb=128,
            gflops=12956,
            best_batch_size=32,
            peak_examples_per_s=776,
            scoring_examples_per_s=3.86,
            work_pool="m4-max",
        ),
        MachineProfile(
            name="m3-ultra",
            chip="Apple M3 Ultra",
            memory_gb=512,
            gflops=4599,
            best_batch_size=4,
            peak_examples_per_s=278,
            scoring_examples_per_s=0.76,
            work_pool="m3-ultra",
        ),
    ]


class SelectionRules(_Strict):
    """Machine choice by model size in billions of parameters (SPEC.md "Hardware rules")."""

    fast_machine: str = Field("m4-max", description="Machine preferred while the model fits in its memory.")
    large_machine: str = Field("m3-ultra", description="Machine for models too large for the fast one.")
    fast_max_b: float = Field(30.0, gt=0, description="Up to this size (B params) always use the fast machine.")
    fast_if_fits_max_b: float = Field(
        70.0, gt=0, description="Up to this size use the fast machine unless it needs more memory than it has."
    )
    large_max_b: float = Field(
        200.0, gt=0, description="Up to this size use the large machine; above it, distribute across machines."
    )

    @model_validator(mode="after")
    def _ordered(self) -> "SelectionRules":
        if not self.fast_max_b <= self.fast_if_fits_max_b <= self.large_max_b:
            raise ValueError("need fast_max_b <= fast_if_fits_max_b <= large_max_b")
        return self


class HardwareConfig(_Strict):
    """Machines, selection rules, default work split and the MLX environment."""

    machines: list[MachineProfile] = Field(
        default_factory=_default_machines, description="Known machines; calibration replaces these numbers."
    )
    selection: SelectionRules = Field(default_factory=SelectionRules, description="Machine choice by model size.")
    default_split: dict[str, float] = Field(
        default_factory=lambda: {"m4-max": 0.655, "m3-ultra": 0.345},
        description="Share of work per machine before calibration: in proportion to measured throughput, never 50/50.",
    )
    environment: dict[str, str] = Field(
        default_factory=lambda: {
            "MLX_METAL_PREALLOCATE": "1",
            "MLX_METAL_FAST_SYNCH": "1",
            "TOKENIZERS_PARALLELISM": "false",
        },
        description="Environment variables set for every MLX job.",
    )

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> "HardwareConfig":
        total = sum(self.default_split.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"default_split must sum to 1.0, got {total}")
        if any(v < 0 for v in self.default_split.values()):
            raise ValueError("default_split shares must be >= 0")
        return self

    def machine(self, name: str) -> MachineProfile:
        """The profile called `name`; KeyError listing the known names otherwise."""
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(f"no machine profile '{name}'; known: {', '.join(m.name for m in self.machines)}")
