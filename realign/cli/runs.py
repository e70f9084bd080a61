"""`realign runs`: the runs under a runs root with tier, key metrics and time, and two runs side by side."""

from __future__ import annotations

import fcntl
import json
import math
from pathlib import Path

# The summary fields a list row shows, after the run's name (each workflow reports the ones it has).
KEY_METRICS = ("target_before", "target_after", "capability_retention", "kl", "calibration_error")
SHORT_HEADERS = {
    "target_before": "before",
    "target_after": "after",
    "capability_retention": "retention",
    "kl": "KL",
    "calibration_error": "ECE",
    "wall_time_s": "wall s",
}


class RunsError(ValueError):
    """A runs root or run directory that cannot be read; the message says which and what to do."""


def read_summary(run_dir: Path) -> dict | None:
    """RUN_DIR/summary.json, or None when the run has none (still running, or failed before its last stage)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunsError(f"{path}: cannot read the run summary ({exc}); the run may have been interrupted") from exc


def list_runs(root: Path) -> list[dict]:
    """One row per run directory under `root`, newest first: name, workflow, tier, key metrics, wall time, and what
    the run is when it has no summary (running, or stopped before stage 7)."""
    if not root.is_dir():
        raise RunsError(f"{root}: no such directory (pass --root, the recipe's runs_root)")
    rows = []
    for d in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True):  # fmt: skip
        summary = read_summary(d)
        if summary is None:
            state = "running" if (d / ".run.lock").is_file() and _locked(d / ".run.lock") else "stopped early"
            rows.append({"run": d.name, "workflow": None, "tier": state})
            continue
        results = summary.get("results", {})
        rows.append(
            {
                "run": d.name,
                "workflow": summary.get("workflow"),
                "tier": summary.get("tier"),
                **{k: results.get(k) for k in KEY_METRICS if k in results},
                "wall_time_s": summary.get("wall_time_s"),
            }
        )
    return rows


def _locked(path: Path) -> bool:
    """Whether another process holds the run directory's lock (a run in progress)."""
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _resolve(run: str, root: Path) -> Path:
    path = Path(run)
    if not path.is_dir():
        path = root / run
    if not path.is_dir():
        raise RunsError(f"{run}: no such run (a run directory, or a name under {root})")
    return path


def compare_runs(a: str, b: str, root: Path) -> tuple[list[str], list[tuple[str, object, object]]]:
    """(the two run names, rows of metric, value in A, value in B) over every number both summaries report: the
    results (before/after/control and stage-7 metrics), the gates' tiers, time and throughput."""
    dirs = [_resolve(r, root) for r in (a, b)]
    summaries = []
    for d in dirs:
        s = read_summary(d)
        if s is None:
            raise RunsError(f"{d}: has no summary.json (the run is still going, or stopped before stage 7)")
        summaries.append(s)

    def flat(s: dict) -> dict:
        out = {"workflow": s.get("workflow"), "tier": s.get("tier")}
        out.update(s.get("results", {}))
        out.update({f"gate {k}": v for k, v in s.get("gate_tiers", {}).items()})
        for k in ("examples_processed", "wall_time_s", "compute_time_s", "throughput_examples_per_s"):
            if k in s:
                out[k] = s[k]
        return out

    fa, fb = flat(summaries[0]), flat(summaries[1])
    keys = list(fa) + [k for k in fb if k not in fa]
    return [d.name for d in dirs], [(k, fa.get(k), fb.get(k)) for k in keys]


def shown(value: object) -> str:
    """A value for a table cell: 4 significant digits, missing or NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
