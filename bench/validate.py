"""`realign validate` throughput and peak memory on 100k vs 1M lines, measured in this run.

Streaming means peak memory does not grow with the file: the printed memory ratio
(1M-line peak / 100k-line peak) should be close to 1 while the line ratio is 10.

    python bench/validate.py [--lines 1000000]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = (
    "import resource, sys, time\n"
    "import realign\n"
    "from realign.data.formats import validate_file\n"
    "t = time.perf_counter()\n"
    "r = validate_file(sys.argv[1], 'dpo', out=sys.argv[2], rejects=sys.argv[3])\n"
    "print(r.lines, r.valid, r.rejected, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def make_file(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            row = {
                "prompt": f"What is {a} + {b}? Explain step by step.",
                "chosen": f"{a} + {b} = {a + b}",
                "rejected": f"{a} + {b} = {a + b + 1}",
            }
            if i % 100 == 0:
                row["rejected"] = row["chosen"]  # 1% bad rows
            fh.write(json.dumps(row) + "\n")


def run(path: Path) -> tuple[int, int, int, float, int]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(path.with_suffix(".clean.jsonl")),
            str(path.with_suffix(".rej.jsonl")),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), int(out[2]), float(out[3]), int(out[4])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = {}
        for n in (args.lines // 10, args.lines):
            f = Path(d) / f"pairs_{n}.jsonl"
            t = time.perf_counter()
            make_file(f, n)
            gen_s = time.perf_counter() - t
            lines, valid, rejected, secs, rss_kb = run(f)
            assert lines == n and valid + rejected == n
            results[n] = (secs, rss_kb)
            print(
                f"{n:>9,} lines  {f.stat().st_size / 1e6:7.1f} MB  validate {secs:6.2f}s ({n / secs:,.0f} lines/s; "
                f"generating the file took {gen_s:.2f}s)  peak RSS {rss_kb / 1024:6.1f} MB  rejected {rejected:,}"
            )
        (s_small, m_small), (s_big, m_big) = results[args.lines // 10], results[args.lines]
        print(f"10x the lines: time ratio {s_big / s_small:.2f}x, peak memory ratio {m_big / m_small:.2f}x")


if __name__ == "__main__":
    main()
