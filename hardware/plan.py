"""A run plan: machine, mode, batch sizes, split, environment, time and cost for N examples."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hardware.config import HardwareConfig
from hardware.selection import select_machine
from hardware.shards import makespan, plan_shards
from hardware.sizing import ModelSize, memory_estimate, parse_size, size_from_config


@dataclass
class RunPlan:
    model: str
    params_b: float
    memory: dict
    machines: list[str]
    mode: str
    reason: str
    batch_size: dict[str, int]
    split: dict[str, int]
    throughput: dict[str, float]
    throughput_source: str
    environment: dict[str, str]
    estimated_seconds: float | None
    cost: float | None
    cost_per_example: float | None
    cost_note: str

    def as_dict(self) -> dict:
        return asdict(self)


def model_size(model: str) -> ModelSize:
    """From a model directory's config.json, or a size named in the text ("Qwen 7B")."""
    path = Path(model)
    if (path / "config.json").is_file():
        return size_from_config(json.loads((path / "config.json").read_text()))
    return ModelSize(parse_size(model) * 1e9)


def make_plan(
    model: str,
    examples: int,
    *,
    throughput: dict[str, float] | None = None,
    price_per_hour: dict[str, float] | None = None,
    seq_len: int = 1024,
    hw: HardwareConfig | None = None,
) -> RunPlan:
    """Plan `examples` of work on `model`. Throughput (examples/s per pool) defaults to the profiles'
    measured scoring rates; pass calibrated figures to override them."""
    hw = hw or HardwareConfig()
    size = model_size(model)
    first = hw.machine(hw.selection.fast_machine)
    mem = memory_estimate(size, first.best_batch_size, seq_len)
    sel = select_machine(size.params_b, mem.total_gb, hw)
    if sel.mode == "separate":
        # every machine the model fits on takes a share of independent batches
        fits = [m for m in hw.machines if memory_estimate(size, m.best_batch_size, seq_len).total_gb <= m.memory_gb]
        pools = [m.name for m in fits] or sel.machines
    else:
        pools = sel.machines
    if sel.mode == "sharded":
        # One model across machines: the group processes every example together; its rate must be measured.
        group = "+".join(pools)
        rate = (throughput or {}).get(group)
        tp = {group: rate} if rate else {}
        split = {group: examples}
        seconds = examples / rate if rate else None
        source = (
            "given (calibrated)"
            if rate
            else f"not measured: pass --throughput {group}=EX_PER_S after calibrating the group"
        )
        pools = [group]
    else:
        if throughput:
            tp, source = {p: throughput.get(p, 0.0) for p in pools}, "given (calibrated)"
        else:
            tp = {p: hw.machine(p).scoring_examples_per_s or 0.0 for p in pools}
            source = (
                "default profiles (the seeds' measured scoring rates, not this model's); calibrate for real figures"
            )
        split = plan_shards(examples, tp)
        seconds = makespan(split, tp)
    if seconds is None:
        cost, note = None, "time not estimated, so no cost"
    elif price_per_hour:
        prices = {p: sum(price_per_hour.get(m, float("nan")) for m in p.split("+")) for p in pools}
        missing = [p for p, v in prices.items() if v != v]
        cost = None if missing else sum(prices[p] * split[p] / tp[p] / 3600 for p in pools if split[p] > 0)
        note = (
            f"no price for {', '.join(missing)}"
            if missing
            else "price per machine-hour x the hours each machine is busy"
        )
    else:
        cost, note = None, "no price per machine-hour given: cost not computed"
    return RunPlan(
        model=model,
        params_b=size.params_b,
        memory=asdict(mem),
        machines=sel.machines,
        mode=sel.mode,
        reason=sel.reason,
        batch_size=sel.batch_size if sel.mode == "sharded" else {p: hw.machine(p).best_batch_size for p in pools},
        split=split,
        throughput=tp,
        throughput_source=source,
        environment=sel.environment,
        estimated_seconds=seconds,
        cost=cost,
        cost_per_example=cost / examples if cost is not None and examples else None,
        cost_note=note,
    )
