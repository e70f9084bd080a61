"""Which machine runs a job, in which mode, at what batch size (SPEC.md "Hardware rules" as defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hardware.config import HardwareConfig


@dataclass
class Selection:
    """machines: where the job runs; mode: 'separate' (each machine works on its own batches) or
    'sharded' (the model is split across machines, RDMA); reason: the rule that decided; fits: False when the job
    needs more memory than all machines have together (the plan says so instead of pretending)."""

    machines: list[str]
    mode: Literal["separate", "sharded"]
    batch_size: dict[str, int]
    reason: str
    environment: dict[str, str] = field(default_factory=dict)
    fits: bool = True


def select_machine(
    params_b: float, memory_gb: float, hw: HardwareConfig | None = None, *, syncs_gradients: bool = False
) -> Selection:
    """Pick the fastest machine that fits, following the size bands of the selection rules.

    <= fast_max_b: the fast machine. <= fast_if_fits_max_b: the fast machine unless the job needs more
    memory than it has. <= large_max_b: the large machine. Larger, or too big for any single machine:
    sharded across all machines. A job that syncs gradients across machines is sharded by definition.
    """
    hw = hw or HardwareConfig()
    r = hw.selection
    fast, large = hw.machine(r.fast_machine), hw.machine(r.large_machine)
    env = dict(hw.environment)
    everyone = [m.name for m in hw.machines]
    pooled = sum(m.memory_gb for m in hw.machines)

    def one(m, why):
        return Selection([m.name], "separate", {m.name: m.best_batch_size}, why, env)

    if syncs_gradients and len(everyone) > 1:
        return Selection(
            everyone,
            "sharded",
            {m.name: m.best_batch_size for m in hw.machines},
            "training that syncs gradients across machines needs sharded (RDMA) mode",
            env,
            fits=memory_gb <= pooled,
        )
    if params_b <= r.fast_max_b and memory_gb <= fast.memory_gb:
        return one(fast, f"{params_b:g}B <= {r.fast_max_b:g}B: the fastest machine ({fast.name})")
    if params_b <= r.fast_if_fits_max_b and memory_gb <= fast.memory_gb:
        return one(fast, f"{params_b:g}B needs {memory_gb:.0f} GB <= {fast.memory_gb:g} GB: {fast.name} is faster")
    if params_b <= r.large_max_b and memory_gb <= large.memory_gb:
        return one(
            large,
            f"{params_b:g}B needs {memory_gb:.0f} GB: more than {fast.name} has, fits {large.name} "
            f"({large.memory_gb:g} GB)",
        )
    reason = f"{params_b:g}B needs {memory_gb:.0f} GB: no single machine fits it, shard across {', '.join(everyone)}"
    if memory_gb > pooled:
        reason += (
            f"; but that is more than all machines have together ({pooled:g} GB): it does not fit (use LoRA, a "
            "quantised model, a smaller batch or shorter sequences)"
        )
    return Selection(
        everyone,
        "sharded",
        {m.name: m.best_batch_size for m in hw.machines},
        reason,
        env,
        fits=memory_gb <= pooled,
    )
