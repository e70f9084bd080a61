"""MLX matmul GFLOPS with realign's OpenBLAS preload vs MLX's bundled BLAS, measured in this run.

Each figure is `realign doctor --json`'s float32 1024^2 matmul timing, in a fresh process per call, in interleaved
rounds (preload, without, mlx-first, preload, ...; medians):
  with preload  `python -m realign.cli doctor --json`, REALIGN_NO_FAST_BLAS=0: `-m realign.cli` imports the realign
                package (which preloads OpenBLAS) before the CLI module, and MLX only after that;
  without       the same with REALIGN_NO_FAST_BLAS=1 (no preload: MLX's bundled BLAS);
  mlx first     a child that imports mlx.core *before* realign (the mistake realign warns about), same timing code.

Verified (issue #18 asked whether this bench imports MLX before realign and so measures the slow BLAS): it does not.
This script never imports MLX itself; the doctor child maps libopenblas (its `fast_blas` line names the loaded
library) and is several times faster than both the REALIGN_NO_FAST_BLAS=1 child and the mlx-first child, which agree
with each other. The mlx-first line is kept so every run shows the difference the import order makes.

    python bench/blas.py [--rounds 3]   prints the figures and the ratio (target: >= 10x on Linux)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MLX_FIRST = (
    "import json, warnings\n"
    "warnings.simplefilter('ignore')\n"
    "import mlx.core\n"  # deliberately before realign: the linker binds MLX to its bundled BLAS
    "import realign\n"
    "from hardware.calibrate import measure_matmul_gflops\n"
    "from realign._blas import blas_status\n"
    "g, per = measure_matmul_gflops(1024)\n"
    "print(json.dumps({'gflops': g, 'matmul_seconds': per, 'fast_blas': blas_status().reason}))\n"
)


def child(args: list[str], disable: bool) -> dict:
    env = {**os.environ, "REALIGN_NO_FAST_BLAS": "1" if disable else "0"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=True, cwd=REPO)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    doctor = ["-m", "realign.cli", "doctor", "--json"]
    runs = {"with preload": [], "without": [], "mlx first": []}
    for _ in range(args.rounds):
        runs["with preload"].append(child(doctor, disable=False))
        runs["without"].append(child(doctor, disable=True))
        runs["mlx first"].append(child(["-c", MLX_FIRST], disable=False))
    gflops = {k: statistics.median(r["gflops"] for r in v) for k, v in runs.items()}
    first = runs["with preload"][0]
    print(f"platform        {first['platform']}  ({first['device']}); {args.rounds} interleaved rounds, medians")
    for name, rs in runs.items():
        ms = statistics.median(r["matmul_seconds"] for r in rs) * 1e3
        print(f"{name:15} {gflops[name]:9.1f} GFLOPS  ({ms:.1f} ms per 1024^2 matmul)  [{rs[0]['fast_blas']}]")
    ratio = gflops["with preload"] / gflops["without"]
    print(f"ratio           {ratio:9.1f}x  (target >= 10x on Linux)")
    result = {
        "bench": "blas",
        "metric": "MLX matmul GFLOPS, OpenBLAS preload vs bundled BLAS",
        "measured": gflops["with preload"],
        "baseline": gflops["without"],
        "ratio": ratio,
        "target": 10.0 if sys.platform.startswith("linux") else None,
        "mlx_first": gflops["mlx first"],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
