"""Makespan of a throughput-proportional split vs a 50/50 split over two workers, one at half speed.

Each worker is a separate process generating real completions with the tiny model; the slow one
sleeps as long as it computed after every batch (half speed, set by configuration). Both splits run
in this benchmark, back to back, and the ratio is printed.

    python bench/shards.py [--examples 2048]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from hardware.shards import makespan, plan_shards  # noqa: E402

WORKER = r"""
import json, sys, time
import realign
from realign.generate import GenerationConfig, generate
from realign.models import load_model
model, n, slowdown = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lm = load_model(model)
cfg = GenerationConfig(batch_size=16, max_tokens=12, temperature=1.0, seed=0)
generate(lm.model, lm.tokenizer, ["Reverse: 1"] * 16, cfg)  # warm-up
start = time.perf_counter()
done = 0
while done < n:
    b = min(16, n - done)
    t = time.perf_counter()
    generate(lm.model, lm.tokenizer, [f"Reverse: {1000 + done + i}" for i in range(b)], cfg)
    time.sleep((slowdown - 1) * (time.perf_counter() - t))
    done += b
print(json.dumps({"examples": n, "seconds": time.perf_counter() - start}))
"""


def run_workers(model: Path, shares: dict[str, int], slowdown: dict[str, float]) -> dict[str, float]:
    procs = {name: subprocess.Popen([sys.executable, "-c", WORKER, str(model), str(n), str(slowdown[name])], stdout=subprocess.PIPE, text=True)
             for name, n in shares.items() if n > 0}
    return {name: json.loads(p.communicate()[0])["seconds"] for name, p in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=2048)
    args = ap.parse_args()
    from realign.tiny import build_tiny_model

    slowdown = {"fast": 1.0, "slow": 2.0}
    with tempfile.TemporaryDirectory() as d:
        model = build_tiny_model(Path(d) / "tiny")
        # calibrate: each worker alone on a short run
        probe = {name: 64 / run_workers(model, {name: 64}, slowdown)[name] for name in slowdown}
        split = plan_shards(args.examples, probe)
        start = time.perf_counter()
        calibrated = run_workers(model, split, slowdown)
        cal_wall = time.perf_counter() - start
        half = {name: args.examples // 2 for name in slowdown}
        start = time.perf_counter()
        fifty = run_workers(model, half, slowdown)
        half_wall = time.perf_counter() - start
    print(f"measured throughput: " + ", ".join(f"{k}={v:.1f} ex/s" for k, v in probe.items()))
    print(f"calibrated split {split}: makespan {max(calibrated.values()):.2f}s (predicted {makespan(split, probe):.2f}s, wall {cal_wall:.2f}s)")
    print(f"50/50 split {half}: makespan {max(fifty.values()):.2f}s (predicted {makespan(half, probe):.2f}s, wall {half_wall:.2f}s)")
    print(f"50/50 / calibrated makespan: {max(fifty.values()) / max(calibrated.values()):.2f}x")


if __name__ == "__main__":
    main()
