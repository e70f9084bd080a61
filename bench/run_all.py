"""Run every ratio bench as a subprocess and print one table: bench | what | measured | baseline | ratio | target | ok.

Each bench prints its own report (shown as it runs) and a last line `RESULT {json}` with its measured figure, the
in-run baseline, their ratio and its target; this script reads those lines and prints nothing it did not measure.
`ok` is ratio >= target, or for a share that must stay small (`target_max`), measured <= target_max ("-" when a
bench has no target or could not measure). A bench may add more rows (`extra_rows`, same fields). Exit status 1
when a bench failed or printed no RESULT line; a missed target shows as "no" but is not a failure of the command.

    python bench/run_all.py [--quick] [--only dpo_step generation]
    --quick   small arguments for a quick look on a busy machine (fewer rounds and steps; noisier)
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# bench -> (script, default arguments, quick arguments); unnamed arguments are each script's own defaults
BENCHES = {
    "blas": ("blas.py", [], ["--rounds", "1"]),
    "sft_vs_mlx_lm": ("sft_vs_mlx_lm.py", [], ["--steps", "12", "--rounds", "2", "--batch", "16"]),
    "generation": ("generation.py", [], ["--rounds", "2", "--single", "4"]),
    "dpo_step": ("dpo_step.py", [], ["--steps", "11", "--blocks", "3"]),
    "fused_step": ("fused_step.py", [], ["--rounds", "2", "--steps", "5"]),
    "rl_prefill": ("rl_prefill.py", [], ["--rounds", "2"]),
    # the demo's overhead share needs the demo itself (about 6 minutes on 2 cores): not in --quick
    "startup": ("startup.py", ["--demo"], ["--rounds", "1"]),
}


def run(name: str, quick: bool) -> tuple[dict | None, float]:
    script, default_args, quick_args = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), *(quick_args if quick else default_args)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
    result = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait()
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"=== {name} failed with exit status {proc.returncode}", flush=True)
        return None, secs
    return result, secs


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def table_row(name: str, r: dict, secs: str) -> list[str]:
    ratio, target, most = r.get("ratio"), r.get("target"), r.get("target_max")
    if most is not None:  # a share that must stay small
        ok, shown = ("-" if r.get("measured") is None else ("yes" if r["measured"] <= most else "no")), f"<= {most:g}"
    else:
        ok = "-" if ratio is None or target is None else ("yes" if ratio >= target else "no")
        shown = "-" if target is None else f">= {target:g}x"
    return [
        name,
        r.get("metric", ""),
        fmt(r.get("measured")),
        fmt(r.get("baseline")),
        "-" if ratio is None else f"{ratio:.2f}x",
        shown,
        ok,
        secs,
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small arguments (see BENCHES)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benches")
    args = ap.parse_args()
    rows, failed = [], False
    for name in args.only or BENCHES:
        r, secs = run(name, args.quick)
        if r is None or r.get("measured") is None:
            failed = failed or r is None
            reason = "failed" if r is None else f"not measured: {r.get('reason', '?')}"
            rows.append([name, reason, "-", "-", "-", "-", "-", f"{secs:.0f}"])
            continue
        for i, part in enumerate([r, *r.get("extra_rows", [])]):
            rows.append(table_row(name if i == 0 else "", part, f"{secs:.0f}" if i == 0 else ""))
    header = ["bench", "what (measured vs baseline)", "measured", "baseline", "ratio", "target", "ok", "s"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("\n" + ("quick arguments (--quick)" if args.quick else "default arguments"))
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
