"""Calibration: measure this machine instead of trusting the default table.

matmul GFLOPS with MLX, the OpenBLAS thread count (training steps/s and CPU time per step at each count; the fewest
threads within `tolerance` of the fastest are chosen), then a batch-size sweep (1, 2, 4, ... 64) of the real
workload (batched generation with the run's model) giving an examples/s curve.
The chosen batch is the smallest within `tolerance` of the peak: a machine that
"peaks early" gets a small batch.

A result is keyed by the model it was measured on (`ModelKey`: architecture, parameter count, bits per weight) and
applies only to a matching model (`calibration_applies`): a batch chosen for the tiny model says nothing about 70B.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hardware.sizing import ModelKey, size_from_config


def measure_matmul_gflops(n: int = 1024, min_seconds: float = 0.5, min_reps: int = 3) -> tuple[float, float]:
    """Time float32 n x n matmuls on MLX's default device.

    Returns (gflops, seconds per matmul); 2*n^3 flops per matmul, after one warm-up.
    """
    import mlx.core as mx

    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b)
    mx.eval(a @ b)  # warm-up: first call pays allocation and dispatch setup
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        mx.eval(a @ b)
        reps += 1
    per = (time.perf_counter() - start) / reps
    return 2 * n**3 / per / 1e9, per


def choose_batch(curve: dict[int, float], tolerance: float = 0.05) -> int:
    """Smallest batch size whose throughput is within `tolerance` (fraction) of the best."""
    if not curve:
        raise ValueError("empty throughput curve")
    peak = max(curve.values())
    return min(b for b, v in curve.items() if v >= (1 - tolerance) * peak)


def choose_threads(steps_per_s: dict[int, float], tolerance: float = 0.05) -> int:
    """Fewest threads whose training throughput is within `tolerance` (fraction) of the fastest count's: threads
    beyond that spin for nothing and take cores from everything else the machine runs (server, gates, workers)."""
    if not steps_per_s:
        raise ValueError("no thread counts measured")
    best = max(steps_per_s.values())
    return min(n for n, v in steps_per_s.items() if v >= (1 - tolerance) * best)


def thread_counts(cpus: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    cpus = cpus or os.cpu_count() or 1
    counts, n = [], 1
    while n < cpus:
        counts.append(n)
        n *= 2
    return counts + [cpus]


def sweep_blas_threads(
    model_dir: str,
    counts: Sequence[int] | None = None,
    *,
    steps: int = 6,
    rounds: int = 2,
    batch_size: int = 8,
    tolerance: float = 0.05,
    on_point: Callable[[int, float, float], None] | None = None,
) -> dict | None:
    """Training steps/s and CPU seconds per step of `model_dir` (LoRA SFT on digit-reversal rows) at each OpenBLAS
    thread count, in interleaved rounds (medians), and the chosen count. None when the fast BLAS is not active
    (MLX then uses a BLAS whose threads realign does not set). The thread count is restored afterwards.

    Each count trains `steps` steps per round in a fresh `train` call; its first step compiles and is not timed.
    """
    import statistics

    from realign._blas import blas_threads, set_blas_threads
    from realign.model.load import load_model
    from realign.train.batches import sft_batches
    from realign.train.loop import TrainConfig, prepare_model, train
    from realign.train.objectives import sft_loss

    before = blas_threads()
    if before is None:
        return None
    counts = list(counts or thread_counts())
    lm = load_model(model_dir)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=1e-5, metrics_every=steps + 1)
    prepare_model(lm.model, cfg)
    rows = [(f"Reverse: {1000 + 37 * i}", str(1000 + 37 * i)[::-1]) for i in range(4 * batch_size)]
    batch_at = sft_batches(lm.tokenizer, rows, cfg)
    rates: dict[int, list[float]] = {n: [] for n in counts}
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(rounds):
            for n in counts:
                set_blas_threads(n)
                stamps: list[tuple[float, float]] = []
                train(
                    lm.model,
                    sft_loss,
                    batch_at,
                    cfg,
                    measure=None,
                    callback=lambda row: stamps.append((time.perf_counter(), time.process_time())),
                )
                (w0, c0), (w1, c1) = stamps[0], stamps[-1]
                rates[n].append((len(stamps) - 1) / (w1 - w0))
                cpu[n].append((c1 - c0) / (len(stamps) - 1))
    finally:
        set_blas_threads(before)
    steps_per_s = {n: statistics.median(v) for n, v in rates.items()}
    cpu_s = {n: statistics.median(v) for n, v in cpu.items()}
    if on_point:
        for n in counts:
            on_point(n, steps_per_s[n], cpu_s[n])
    return {
        "chosen": choose_threads(steps_per_s, tolerance),
        "steps_per_s": {str(n): v for n, v in steps_per_s.items()},
        "cpu_s_per_step": {str(n): v for n, v in cpu_s.items()},
        "tolerance": tolerance,
        "workload": f"LoRA SFT steps, batch {batch_size}, {steps - 1} timed per round, {rounds} rounds (medians)",
    }


@dataclass
class CalibrationResult:
    gflops: float
    curve: dict[int, float]  # batch size -> examples/s
    chosen_batch: int
    peak_examples_per_s: float
    model: str
    max_tokens: int
    tolerance: float
    model_key: dict | None = None  # ModelKey.as_dict() of the model swept; None when it has no readable config.json
    blas_threads: dict | None = None  # sweep_blas_threads(); None when not measured (no fast BLAS)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["curve"] = {str(k): v for k, v in self.curve.items()}
        return d


def calibrate(
    model_dir: str,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    *,
    max_tokens: int = 16,
    tolerance: float = 0.05,
    rounds: int = 2,
    on_point: Callable[[int, float], None] | None = None,
    threads: bool = True,
    on_threads: Callable[[int, float, float], None] | None = None,
) -> CalibrationResult:
    """Measure GFLOPS, the OpenBLAS thread count (`threads`) and the generation throughput curve of `model_dir`.

    The batch sweep runs at the chosen thread count. Each batch size generates `rounds` batches of `max_tokens`
    tokens after one warm-up batch; examples/s = sequences finished / seconds.
    """
    from realign._blas import set_blas_threads
    from realign.model.generate import GenerationConfig, generate
    from realign.model.load import load_model

    gflops, _ = measure_matmul_gflops()
    threads_found = sweep_blas_threads(model_dir, tolerance=tolerance, on_point=on_threads) if threads else None
    if threads_found:
        set_blas_threads(threads_found["chosen"])
    lm = load_model(model_dir)
    key = model_key_of(lm.path)
    curve: dict[int, float] = {}
    for b in batch_sizes:
        prompts = [f"Reverse: {1000 + 37 * i}" for i in range(b)]
        cfg = GenerationConfig(batch_size=b, max_tokens=max_tokens, temperature=1.0, seed=0)
        generate(lm.model, lm.tokenizer, prompts, cfg)  # warm-up at this shape
        start = time.perf_counter()
        for _ in range(rounds):
            generate(lm.model, lm.tokenizer, prompts, cfg)
        curve[b] = rounds * b / (time.perf_counter() - start)
        if on_point:
            on_point(b, curve[b])
    chosen = choose_batch(curve, tolerance)
    return CalibrationResult(
        gflops,
        curve,
        chosen,
        max(curve.values()),
        str(model_dir),
        max_tokens,
        tolerance,
        key.as_dict() if key else None,
        threads_found,
    )


def model_key_of(model_dir: str | Path) -> ModelKey | None:
    """The key of the model in `model_dir` (from its config.json); None when there is no readable config.json."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        return size_from_config(cfg).key()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibration_key(data: dict) -> ModelKey | None:
    """The model a saved calibration was measured on.

    Saved by this version: its `model_key`. Saved before keys existed: the key of its `model` directory when that
    config.json can still be read; otherwise None. An unkeyed calibration applies to no model: by default
    `realign calibrate` sweeps a tiny model built in a temporary directory (gone since), and applying its batch
    to a real model is exactly the mistake keys prevent. Recalibrate with `realign calibrate --model DIR`.
    """
    if data.get("model_key"):
        try:
            return ModelKey.from_dict(data["model_key"])
        except (KeyError, TypeError, ValueError):
            return None
    return model_key_of(data["model"]) if data.get("model") else None


def calibration_applies(data: dict | None, key: ModelKey) -> tuple[bool, str]:
    """Whether a saved calibration (`load_calibration()`) was measured on a model matching `key`, and why (or not)."""
    if not data:
        return False, "this machine is not calibrated"
    measured = calibration_key(data)
    if measured is None:
        return False, (
            "this machine's calibration names no model it was measured on (saved before calibrations were keyed, or "
            "its model directory is gone): not used; recalibrate with `realign calibrate --model DIR`"
        )
    if not measured.matches(key):
        return False, (
            f"this machine's calibration was measured on {measured.describe()}, not this model ({key.describe()}): "
            "not used"
        )
    return True, f"this machine's calibration ({measured.describe()}) matches this model"
