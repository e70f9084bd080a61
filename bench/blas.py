"""MLX matmul GFLOPS with realign's OpenBLAS preload vs MLX's bundled BLAS, measured in this run.

python bench/blas.py            prints both figures and their ratio (target: >= 10x on Linux)
"""

import json
import os
import subprocess
import sys


def doctor(disable: bool) -> dict:
    env = {**os.environ, "REALIGN_NO_FAST_BLAS": "1" if disable else "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "realign.cli", "doctor", "--json"], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(proc.stdout)


def main() -> None:
    fast, slow = doctor(False), doctor(True)
    print(f"platform        {fast['platform']}  ({fast['device']})")
    print(f"fast BLAS       {fast['fast_blas']}")
    print(
        f"with preload    {fast['gflops']:9.1f} GFLOPS  "
        f"({fast['matmul_seconds'] * 1e3:.1f} ms per {fast['matmul_size']}^2 matmul)"
    )
    print(
        f"without         {slow['gflops']:9.1f} GFLOPS  ({slow['matmul_seconds'] * 1e3:.1f} ms)  [{slow['fast_blas']}]"
    )
    print(f"ratio           {fast['gflops'] / slow['gflops']:9.1f}x")


if __name__ == "__main__":
    main()
