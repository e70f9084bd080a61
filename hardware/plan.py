"""A run plan: machine, mode, batch sizes, split, environment, time and cost for N examples.

The memory that picks the machine is the job's (hardware.sizing.memory_estimate): inference (scoring, generation;
the default), LoRA or full training, at the model's storage format (`quantization`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from hardware.calibrate import calibration_applies
from hardware.config import HardwareConfig, MachineProfile
from hardware.selection import select_machine
from hardware.shards import makespan, plan_shards
from hardware.sizing import (
    TRAIN_BATCH_SIZE,
    TRAIN_SEQ_LEN,
    LoRASpec,
    ModelSize,
    assumed_architecture,
    memory_estimate,
    parse_size,
    size_from_config,
    with_quantization,
)
from realign.model.load import model_root

INFERENCE_SEQ_LEN = 1024  # tokens per scored or generated example when the caller names none


@dataclass
class RunPlan:
    model: str
    params_b: float
    method: str  # inference, lora or full
    weights_format: str  # how the weights are stored: 4bit, 8bit, bf16/fp16, fp32
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
    fits: bool = True  # False: more memory than all machines have together
    calibration: str = ""  # whether this machine's calibration was used, and why

    def as_dict(self) -> dict:
        return asdict(self)


def model_size(model: str, quantization: str | None = None) -> ModelSize:
    """From a model directory's config.json, or a size named in the text ("Qwen 7B", whose architecture is assumed
    from the nearest known shape, hardware.sizing.KNOWN_SHAPES), stored as `quantization` (None: as the directory
    stores it, bf16 for a size)."""
    path = model_root(model)  # a LoRA stage's adapters: the size of the model under them
    if (path / "config.json").is_file():
        size = size_from_config(json.loads((path / "config.json").read_text()))
    else:
        size = assumed_architecture(parse_size(model) * 1e9, model)
    return with_quantization(size, quantization)


def make_plan(
    model: str,
    examples: int,
    *,
    throughput: dict[str, float] | None = None,
    price_per_hour: dict[str, float] | None = None,
    seq_len: int | None = None,
    hw: HardwareConfig | None = None,
    method: str = "inference",
    quantization: str | None = None,
    batch_size: int | None = None,
    lora: LoRASpec | None = None,
    calibration: dict | None = None,
) -> RunPlan:
    """Plan `examples` of work on `model`. Throughput (examples/s per pool) defaults to the profiles'
    measured scoring rates; pass calibrated figures to override them.

    method: 'inference' (scoring, generation: the default, and what the profiles' rates measure), 'lora' or 'full'
    training. quantization: the weights' storage format (hardware.sizing.with_quantization). batch_size: sequences
    per batch; default the machine's best batch for inference, realign's training batch (8) for training.
    seq_len: tokens per sequence; default 1024 for inference, realign's training cap (max_seq_len, 512) for training.
    calibration: this machine's saved calibration (hardware.profiles.load_calibration()); its chosen batch replaces
    the profile's for inference only when it was measured on a matching model (hardware.calibrate.calibration_applies).
    A training job runs on one machine (or one sharded group): its examples are not split between machines, which
    would train two different models.
    """
    hw = hw or HardwareConfig()
    size = model_size(model, quantization)
    training = method != "inference"
    seq_len = seq_len or (TRAIN_SEQ_LEN if training else INFERENCE_SEQ_LEN)
    calibrated, cal_note = _calibrated_batch(calibration, size, hw, training, batch_size)

    def batch_for(m: MachineProfile) -> int:
        if batch_size:
            return batch_size
        return TRAIN_BATCH_SIZE if training else calibrated.get(m.name, m.best_batch_size)

    def need(m: MachineProfile):
        return memory_estimate(size, batch_for(m), seq_len, method=method, lora=lora)

    mem = need(hw.machine(hw.selection.fast_machine))
    sel = select_machine(size.params_b, mem.total_gb, hw)
    if sel.mode == "separate" and not training:
        # every machine the model fits on takes a share of independent batches
        fits = [m for m in hw.machines if need(m).total_gb <= m.memory_gb]
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
    elif training:
        pool = pools[0]
        rate = (throughput or {}).get(pool)
        tp = {pool: rate} if rate else {}
        split = {pool: examples}
        seconds = examples / rate if rate else None
        source = (
            "given (calibrated)"
            if rate
            else f"training rate not measured: pass --throughput {pool}=EX_PER_S (the profiles' rates are scoring)"
        )
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
        method=method,
        weights_format=size.format,
        memory=asdict(mem),
        machines=sel.machines,
        mode=sel.mode,
        reason=sel.reason,
        batch_size={m: batch_for(hw.machine(m)) for m in (sel.machines if sel.mode == "sharded" else pools)},
        split=split,
        throughput=tp,
        throughput_source=source,
        environment=sel.environment,
        estimated_seconds=seconds,
        cost=cost,
        cost_per_example=cost / examples if cost is not None and examples else None,
        cost_note=note,
        fits=sel.fits,
        calibration=cal_note,
    )


def _calibrated_batch(
    calibration: dict | None, size: ModelSize, hw: HardwareConfig, training: bool, batch_size: int | None
) -> tuple[dict[str, int], str]:
    """{machine: calibrated batch} when this machine's calibration applies to this plan, and a sentence saying why
    it is used or not (profile defaults otherwise)."""
    if not calibration:
        return {}, "no calibration of this machine: profile defaults"
    if training:
        return {}, "the calibration measures generation, not training: not used for a training plan"
    ok, why = calibration_applies(calibration, size.key())
    if not ok:
        return {}, f"{why}; profile defaults used"
    profile = calibration.get("profile")
    if profile not in {m.name for m in hw.machines}:
        return {}, f"{why}, but it was measured on a {profile or 'generic'} machine, not a planned one: not used"
    if batch_size:
        return {}, f"{why}; --batch-size {batch_size} given instead"
    batch = int(calibration["chosen_batch"])
    return {profile: batch}, f"{why}: batch {batch} on {profile}"
