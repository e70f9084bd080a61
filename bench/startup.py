"""The demo's start-up overhead: Prefect's ephemeral mode and the heavy imports, measured in this run.

Default: the components, each in a fresh Python process, in interleaved rounds (`--rounds`, medians):
  python                 `python -c pass`: the interpreter alone (process wall time);
  import X               prefect, great_expectations, and flows.dpo (the demo's flow module: Prefect, GX, realign,
                         MLX), timed inside the child around the import;
  plain                  a one-task "workflow" as plain functions (process wall time);
  flow                   the same functions as a Prefect @flow/@task in ephemeral mode (no PREFECT_API_URL: Prefect
                         starts a temporary API server on 127.0.0.1, as `realign demo` does), process wall time, and
                         inside the child: the first flow call (temporary server start + run) and a second call.
The Prefect overhead is flow - plain (process wall); its share of a real run needs the real run (--demo). The flow
children share one temporary PREFECT_HOME, so round 1 also creates and migrates its database (printed apart).

--demo (opt-in, ~6 minutes on 2 cores): also runs the DPO demo once, as `realign run dpo --runs-root TMP` (the
recipe `realign demo` runs, with the run directory in a temporary folder instead of ./runs), and reads its log
timestamps (Prefect's `HH:MM:SS.mmm | LEVEL | logger - message` lines) against the spawn time: the flow run's first
line (imports done, server up), the first line of a task run's logger (the first task has started; an upper bound,
as stage 1 first builds the tiny model, then logs), and the exit; and its summary.json's compute_time_s (every
stage's compute, measured inside its task). The overhead share is (whole run - compute) / whole run: the time not
spent in realign's stages (Prefect, the GX gates, start-up and imports); the start-up share is the time before that
first task line over the whole run.

Everything this starts is stopped: each child carries a REALIGN_SESSION id of this bench, and whatever still carries
it after the child exits (Prefect's temporary server normally stops with its process) is stopped by realign's
watchdog helper; the demo child is stopped with its process group if the bench is interrupted.

    python bench/startup.py [--rounds 3] [--demo]
"""

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from realign.cli.watchdog import ENV, stop_session  # noqa: E402

PY = sys.executable

IMPORT = "import time\nt = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)\n"

WORKFLOW = """
def work(n):
    return sum(i * i for i in range(n))

def pipeline(n):
    return work(n)
"""

PLAIN = WORKFLOW + "print(pipeline(1000))\n"

FLOW = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "from prefect import flow, task\n"
    "t1 = time.perf_counter()\n" + WORKFLOW + "work = task(work)\n"
    "pipeline = flow(pipeline)\n"
    "t2 = time.perf_counter()\n"
    "pipeline(1000)\n"
    "t3 = time.perf_counter()\n"
    "pipeline(1000)\n"
    "t4 = time.perf_counter()\n"
    "print(json.dumps({'import': t1 - t0, 'first': t3 - t2, 'second': t4 - t3}))\n"
)


def child_env(home: Path, session: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # ephemeral mode, never a real server
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # as realign's CLI sets it: no telemetry, no outside calls
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONUNBUFFERED="1",
    )
    env[ENV] = session
    return env


def run_child(code: str, env: dict, session: str) -> tuple[float, str]:
    """(process wall seconds, stdout) of `python -c code`; stops whatever it left behind."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        wall = time.perf_counter() - start
    finally:
        stop_session(session, grace_s=5.0)  # not timed: normally there is nothing left to stop
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, (proc.stdout.strip().splitlines() or [""])[-1]


LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| \w+\s*\| (.*)$")


def run_demo(env: dict, session: str, keep_summary: str | None = None) -> dict:
    """Run the DPO demo once; seconds from spawn to its start-up milestones (from its log timestamps) and to exit."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [str(Path(PY).parent / "realign"), "run", "dpo", "--runs-root", runs, "--run-name", "bench-startup"]
        spawned = datetime.datetime.now()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, start_new_session=True
        )
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
            proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: stop the demo and what it started (its watchdog does the rest)
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            stop_session(session, grace_s=5.0)
        total = time.perf_counter() - start
        summary_path = Path(runs) / "bench-startup" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if keep_summary is not None and summary_path.is_file():  # to compare the demo's numbers across commits
            Path(keep_summary).write_text(summary_path.read_text())
        padded = demo_padding(Path(runs) / "bench-startup") if proc.returncode == 0 else None
    if proc.returncode != 0:
        print("\n".join(lines[-30:]))
        raise RuntimeError(f"the demo failed ({proc.returncode})")
    marks = {}
    for line in lines:
        m = LOG_LINE.match(line)
        if not m:
            continue
        h, mi, s, ms, rest = m.groups()
        at = spawned.replace(hour=int(h), minute=int(mi), second=int(s), microsecond=int(ms) * 1000)
        if at < spawned - datetime.timedelta(seconds=1):  # the clock passed midnight
            at += datetime.timedelta(days=1)
        secs = (at - spawned).total_seconds()
        if "Starting temporary server" in rest:
            marks.setdefault("server", secs)
        elif rest.startswith("Flow run '"):
            marks.setdefault("flow", secs)
        elif rest.startswith("Task run '"):
            marks.setdefault("task", secs)
    marks["total"] = total
    # realign's own work: every stage's compute time, measured inside its task (model loading included)
    marks["compute"] = summary.get("compute_time_s")
    marks["flow_wall"] = summary.get("wall_time_s")  # inside the flow, from the Run's start to the summary
    marks["padding"] = padded
    return marks


def demo_padding(run_dir: Path) -> dict | None:
    """The padded share of the positions of the batches the demo's DPO stage (round 1) trained on, rebuilt from the
    run's own pairs, recipe and stage-1 tokenizer as tasks/dpo/dpo_optimization.py builds them (reference log-probs
    do not change shapes: zeros here). None when the run left no pairs."""
    pairs_path = run_dir / "02_preference_data" / "pairs.parquet"
    if not pairs_path.is_file():
        return None
    import numpy as np
    import pandas as pd

    from bench.dpo_step import padding
    from realign.model.load import load_model
    from realign.recipes.dpo import DPOWorkflowConfig
    from realign.train.batches import preference_batches
    from realign.train.held_out import split_with_reference

    cfg = DPOWorkflowConfig.model_validate(json.loads((run_dir / "recipe.json").read_text())).dpo
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    zeros = {k: np.zeros(len(pairs)) for k in ("chosen_logps", "rejected_logps")}
    train_pairs, _, ref_tr, _ = split_with_reference(pairs, zeros, cfg.val_fraction, cfg.train.seed)
    tokenizer = load_model(str(run_dir / "01_sft_preparation" / "model")).tokenizer
    batch_at = preference_batches(tokenizer, train_pairs, cfg.train, ref=ref_tr)
    share, shapes = padding([batch_at(i) for i in range(cfg.train.steps * cfg.train.grad_accum)])
    return {"share": share, "batches": sum(shapes.values()), "shapes": len(shapes)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the component children")
    ap.add_argument("--demo", action="store_true", help="also run the full DPO demo once (~6 minutes on 2 cores)")
    ap.add_argument("--summary", metavar="PATH", help="with --demo: copy the demo's summary.json here")
    args = ap.parse_args()
    session = f"bench-startup-{uuid.uuid4().hex}"
    imports = ("prefect", "great_expectations", "flows.dpo")
    walls = {k: [] for k in ("python", "plain", "flow")}
    inside = {m: [] for m in imports}
    flow_parts = []
    with tempfile.TemporaryDirectory() as home:
        env = child_env(Path(home), session)
        for _ in range(args.rounds):
            walls["python"].append(run_child("pass", env, session)[0])
            for module in imports:
                inside[module].append(float(run_child(IMPORT.format(module=module), env, session)[1]))
            walls["plain"].append(run_child(PLAIN, env, session)[0])
            wall, out = run_child(FLOW, env, session)
            walls["flow"].append(wall)
            flow_parts.append(json.loads(out))
        demo = run_demo(env, session, args.summary) if args.demo else None
    med = {k: statistics.median(v) for k, v in {**walls, **inside}.items()}
    part = {k: statistics.median(p[k] for p in flow_parts) for k in ("import", "first", "second")}
    overhead = med["flow"] - med["plain"]
    print(f"start-up components, each in a fresh process, {args.rounds} interleaved rounds, medians (seconds)")
    print(f"python -c pass (interpreter)          {med['python']:7.2f}")
    for module in imports:
        print(f"import {module:<31}{med[module]:7.2f}")
    print(f"plain functions, process wall         {med['plain']:7.2f}")
    print(f"Prefect flow (ephemeral), process wall{med['flow']:7.2f}")
    print(f"  import prefect inside it            {part['import']:7.2f}")
    fresh = flow_parts[0]["first"]
    print(f"  first flow call (server start + run){part['first']:7.2f}  (round 1, fresh database: {fresh:.2f})")
    print(f"  second flow call                    {part['second']:7.2f}")
    print(f"Prefect overhead (flow - plain)       {overhead:7.2f}  (the share of a real run: --demo)")
    result = {
        "bench": "startup",
        "metric": "Prefect ephemeral overhead, s (1-task flow - plain functions)",
        "measured": overhead,
        "baseline": med["plain"],
        "ratio": None,
        "target": None,
        "flow_s": med["flow"],
        "first_call_s": part["first"],
        "imports_s": {m: med[m] for m in imports},
    }
    if demo is None:
        print("full demo: not measured (opt-in: --demo runs it, ~6 minutes on 2 cores)")
    elif "task" not in demo or demo.get("compute") is None:
        print(f"full demo: ran {demo['total']:.0f} s, but its first task or its summary was not found: not measured")
    else:
        total, compute = demo["total"], demo["compute"]
        overhead = total - compute
        print(
            f"full demo: whole run {total:.1f} s, realign's stage compute {compute:.1f} s (summary.json "
            f"compute_time_s); everything else (Prefect, GX gates, start-up, imports) {overhead:.1f} s = "
            f"{overhead / total:.1%} of the run (target <= 5%)"
        )
        print(
            f"  start-up: flow run at {demo.get('flow', float('nan')):.1f} s, first task at {demo['task']:.1f} s "
            f"({demo['task'] / total:.1%} of the run)"
        )
        if demo.get("flow_wall") is not None:
            print(
                f"  inside the flow: {demo['flow_wall']:.1f} s wall for {compute:.1f} s of stage compute: "
                f"{demo['flow_wall'] - compute:.1f} s of gates and orchestration"
            )
        pad = demo.get("padding")
        if pad:
            print(
                f"  the DPO stage's batches (round 1, rebuilt from the run's pairs): {pad['share']:.1%} of their "
                f"positions are padding, {pad['shapes']} distinct shapes over {pad['batches']} batches (target <= 10%)"
            )
            result["extra_rows"] = [
                {"metric": "padded share of the demo's DPO batches", "measured": pad["share"], "target_max": 0.10}
            ]
        result["demo"] = demo
        result["demo_startup_share"] = demo["task"] / total
        result["demo_overhead_share"] = overhead / total
        result.update(measured=overhead / total, baseline=None, target=None, target_max=0.05)
        result["metric"] = "share of the DPO demo's wall time outside realign's stage compute"
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
