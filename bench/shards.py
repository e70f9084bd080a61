"""Makespan of a throughput-proportional split vs a 50/50 split over two workers, one at half speed.

Each worker is a separate process running the real shard code (realign.score.sampling.run_shard: sample 4
answers per prompt with the tiny model and score them); the slow one has slowdown 2 (it sleeps as
long as it computed after every batch: half speed, set by configuration, as REALIGN_SHARD_SLOWDOWN
does for a worker). Makespans are sampling + scoring time (model loading excluded). Both splits run
in this benchmark, back to back, and the ratio is printed.

    python bench/shards.py [--examples 512]
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
import json, sys
import realign
from realign.score.sampling import PairsConfig
from realign.score.sampling import ShardJob, run_shard
model, inputs, output, slowdown = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pairs = PairsConfig.model_validate({"generation": {"n": 4, "batch_size": 16, "max_tokens": 12}})
job = ShardJob(job="bench", shard=output, model_dir=model, inputs_path=inputs, output_path=output, pairs=pairs, seed=0)
print(json.dumps(run_shard(job, slowdown=slowdown)))
"""


def run_workers(model: Path, shares: dict[str, int], slowdown: dict[str, float], work: Path) -> dict[str, dict]:
    """Each named worker runs the real shard code (realign.score.sampling.run_shard) on its share, all at once."""
    import pandas as pd

    procs, start = {}, 0
    for name, n in shares.items():
        if n <= 0:
            continue
        ids = list(range(start, start + n))
        start += n
        inputs = work / f"in-{name}.parquet"
        pd.DataFrame(
            {
                "row_id": ids,
                "prompt": [f"Reverse: {1000 + i}" for i in ids],
                "answer": [str(1000 + i)[::-1] for i in ids],
            }
        ).to_parquet(inputs)
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(model),
                str(inputs),
                str(work / f"out-{name}.parquet"),
                str(slowdown[name]),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    return {name: json.loads(p.communicate()[0].strip().splitlines()[-1]) for name, p in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=512)
    args = ap.parse_args()
    from realign.model.tiny import build_tiny_model

    slowdown = {"fast": 1.0, "slow": 2.0}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model = build_tiny_model(work / "tiny")
        # calibrate: each worker alone on a short shard; its measured rows/s of sampling + scoring
        probe = {name: run_workers(model, {name: 64}, slowdown, work)[name]["examples_per_s"] for name in slowdown}
        split = plan_shards(args.examples, probe)
        start = time.perf_counter()
        calibrated = {k: v["sampling_seconds"] for k, v in run_workers(model, split, slowdown, work).items()}
        cal_wall = time.perf_counter() - start
        half = {name: args.examples // 2 for name in slowdown}
        start = time.perf_counter()
        fifty = {k: v["sampling_seconds"] for k, v in run_workers(model, half, slowdown, work).items()}
        half_wall = time.perf_counter() - start
    print("measured throughput: " + ", ".join(f"{k}={v:.1f} ex/s" for k, v in probe.items()))
    print(
        f"calibrated split {split}: makespan {max(calibrated.values()):.2f}s "
        f"(predicted {makespan(split, probe):.2f}s, wall {cal_wall:.2f}s)"
    )
    print(
        f"50/50 split {half}: makespan {max(fifty.values()):.2f}s "
        f"(predicted {makespan(half, probe):.2f}s, wall {half_wall:.2f}s)"
    )
    print(f"50/50 / calibrated makespan: {max(fifty.values()) / max(calibrated.values()):.2f}x")


if __name__ == "__main__":
    main()
