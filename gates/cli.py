"""`realign gate ...`: run a suite on a file outside a flow; build Data Docs for a run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gates.report import GateReport
from gates.suites import abliterate, antihallucination, dpo, rlvr, shared, srf
from gates.validate import evaluate
from realign.thresholds import ThresholdsConfig

# Users type suite names here (`realign gate check --suite NAME`); flows pass the functions themselves.
SUITES = {
    fn.__name__.removesuffix("_suite"): fn
    for module in (shared, dpo, srf, rlvr, antihallucination, abliterate)
    for fn in vars(module).values()
    if callable(fn) and getattr(fn, "__module__", "") == module.__name__ and fn.__name__.endswith("_suite")
}

TIER_STYLE = {"HIGH": "green", "MEDIUM": "yellow", "REJECT": "red"}


class GateInputError(ValueError):
    """The file or thresholds given to `realign gate check` cannot be read; the message says where."""


def load_frame(path: Path) -> pd.DataFrame:
    """A run's file as the table a suite checks: JSONL or Parquet rows; a JSON object as one row of its scalar values
    (the metrics files stages write), or as the rows of the one list of objects it holds (rounds.json).
    GateInputError with FILE:LINE on a bad JSON line."""
    if not path.is_file():
        raise GateInputError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() == ".json":
        return _json_frames(path, _read_json(path))[0]
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GateInputError(
                    f"{path}:{n}: not a JSON object ({exc}); run `realign validate` to find and split bad lines"
                ) from exc
            if not isinstance(obj, dict):
                raise GateInputError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
            rows.append(obj)
    return pd.DataFrame(rows)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateInputError(f"{path}: not a JSON file ({exc})") from exc


def _json_frames(path: Path, obj) -> list[pd.DataFrame]:
    """The tables a JSON file can be read as: one row of its scalar values, then the rows of the one list of objects
    it holds (rounds.json's rounds); a list of objects is its rows."""
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return [pd.DataFrame(obj)]
    if not isinstance(obj, dict):
        raise GateInputError(f"{path}: expected a JSON object or a list of objects, got {type(obj).__name__}")
    scalars = pd.DataFrame([{k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) or v is None}])
    tables = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    return [scalars] + ([pd.DataFrame(tables[0])] if len(tables) == 1 else [])


def load_frames(path: Path) -> list[pd.DataFrame]:
    """Every table `path` can be read as (one, except for JSON objects: see _json_frames)."""
    if path.suffix.lower() == ".json" and path.is_file():
        return _json_frames(path, _read_json(path))
    return [load_frame(path)]


def is_gate_report(path: Path) -> bool:
    """A gate_<stage>.json a run (or `gate check --out-dir`) wrote."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    obj = _read_json(path)
    return isinstance(obj, dict) and {"stage", "tier", "outcomes"} <= set(obj)


def suite_columns(name: str) -> set[str]:
    """The columns suite `name` reads (with default thresholds; sft_baseline's benchmarks come from the file)."""
    suite = SUITES[name](ThresholdsConfig())
    return {c for e in suite.expectations if isinstance(c := getattr(e, "column", None), str)}


def one_row_suite(name: str) -> bool:
    """A suite of one-row metric tables (it expects exactly one row)."""
    suite = SUITES[name](ThresholdsConfig())
    return any(type(e).__name__ == "ExpectTableRowCountToEqual" for e in suite.expectations)


def missing_columns(name: str, frame: pd.DataFrame) -> list[str]:
    """What suite `name` reads that `frame` lacks, after the suite derives its own columns."""
    prepared = getattr(SUITES[name], "prepare", lambda d: d)(frame)
    return sorted(suite_columns(name) - set(prepared.columns))


def fits(name: str, frame: pd.DataFrame) -> bool:
    """`frame` is what suite `name` checks: every column it reads, and one row for a metric suite (a per-step
    training log has the metric's name but is not the measurement the gate checked)."""
    return (
        bool(suite_columns(name)) and not missing_columns(name, frame) and (len(frame) <= 1 or not one_row_suite(name))
    )


def fitting_suites(frame: pd.DataFrame, among: list[str] | None = None) -> list[str]:
    """The suites (of `among`, default all) that `frame` fits."""
    return [name for name in among or SUITES if fits(name, frame)]


def stage_suites(file: Path) -> list[str]:
    """The suites the gate of `file`'s stage ran, from the gate_<stage>.json beside it (empty when none)."""
    names = []
    for report in sorted(file.parent.glob("gate_*.json")) if file.parent.is_dir() else []:
        try:
            names += [n for n in json.loads(report.read_text()).get("suites", []) if n in SUITES]
        except (OSError, ValueError, AttributeError):
            continue
    return names


def run_thresholds(file: Path) -> tuple[ThresholdsConfig, Path] | None:
    """The thresholds of the run `file` belongs to (its recipe.json, in a parent directory), so a run's file is checked
    as its gate checked it; None outside a run."""
    for parent in file.resolve().parents:
        recipe = parent / "recipe.json"
        if recipe.is_file():
            try:
                saved = json.loads(recipe.read_text())
                th = saved.get("thresholds") if isinstance(saved, dict) else None
                return (ThresholdsConfig.model_validate(th), recipe) if isinstance(th, dict) else None
            except (OSError, ValueError):
                return None
    return None


def _columns_of(path: Path) -> pd.DataFrame | None:
    """A cheap look at a sibling file's columns (first rows only), or None when it is not a table."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pd.DataFrame(columns=pq.read_schema(path).names)
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                first = json.loads(fh.readline() or "{}")
            return pd.DataFrame([first]) if isinstance(first, dict) else None
        if path.suffix.lower() == ".json" and path.stat().st_size < 1_000_000 and not is_gate_report(path):
            return _json_frames(path, _read_json(path))[0]
    except (OSError, ValueError, GateInputError, ImportError):
        return None
    return None


def instead(file: Path, suite: str | None) -> str:
    """Where to look instead: a file beside `file` that `suite` (or its stage's gate) fits, the stage's own gate
    report, or, for a run's own files (summary, recipe), the run's gate reports."""
    hints, among = [], stage_suites(file) or None
    for sibling in sorted(file.parent.iterdir()) if file.parent.is_dir() else []:
        if sibling == file or not sibling.is_file():
            continue
        frame = _columns_of(sibling)
        if frame is None:
            continue
        good = [suite] if suite and fits(suite, frame) else [] if suite else fitting_suites(frame, among)
        hints += [f"{sibling} (--suite {name})" for name in good]
    reports = sorted(file.parent.glob("gate_*.json")) if file.parent.is_dir() else []
    out = f"check instead: {'; '.join(hints)}" if hints else ""
    if reports:
        out += (
            ("; " if out else "")
            + "this stage's own gate verdict: "
            + ", ".join(f"`realign gate check {r}`" for r in reports)
        )
    elif not out:
        root = next((p for p in file.resolve().parents if (p / "recipe.json").is_file()), None)
        found = sorted(root.glob("*/gate_*.json")) if root else []
        if found:
            out = f"the run's gate verdicts are {', '.join(str(r.relative_to(root)) for r in found)} in {root} "
            out += f"(`realign gate check {found[0]}` shows one; `realign gate docs {root}` all)"
    return out or "give a table with those columns (JSONL, Parquet, or a JSON object of metrics)"


def load_thresholds(path: Path | None) -> ThresholdsConfig:
    """ThresholdsConfig from a YAML/JSON file of overrides (defaults for anything not given)."""
    if path is None:
        return ThresholdsConfig()
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ThresholdsConfig.model_validate(data.get("thresholds", data))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise GateInputError(f"{path}: invalid thresholds file: {exc}") from exc


def check_file(
    suite: str | None,
    file: Path,
    thresholds: ThresholdsConfig,
    stage: str | None = None,
    benchmarks: list[str] | None = None,
) -> GateReport:
    """Check `file` with `suite` (or, when None, the one suite whose columns the file holds). A gate_<stage>.json is
    shown as the verdict it records. A file the suite cannot check is a GateInputError saying what it lacks and
    which file beside it to check instead."""
    if suite is not None and suite not in SUITES:
        raise GateInputError(f"unknown suite '{suite}'; known: {', '.join(SUITES)}")
    if is_gate_report(file):
        try:
            return GateReport.model_validate(_read_json(file))
        except ValueError as exc:
            raise GateInputError(f"{file}: not a readable gate report ({exc})") from exc
    if file.suffix.lower() not in (".jsonl", ".json", ".parquet", ".pq"):
        raise GateInputError(f"{file}: not a table (gate check reads JSONL, Parquet or JSON); {instead(file, suite)}")
    candidates = load_frames(file)
    # Beside a gate report, the suites that gate ran: reward_model.json is the DPO stage 4's, not SRF's stage 3.
    among = [suite] if suite else (stage_suites(file) or None)
    chosen = next(((f, fitting_suites(f, among)) for f in candidates if fitting_suites(f, among)), None)
    frame = chosen[0] if chosen else candidates[0]
    if suite is None:
        found = chosen[1] if chosen else []
        if len(found) != 1:
            cols = ", ".join(map(str, frame.columns)) or "none"
            if found:
                raise GateInputError(
                    f"{file}: several suites fit its columns ({', '.join(found)}): choose one, --suite"
                )
            raise GateInputError(f"{file}: no suite checks its columns ({cols}); {instead(file, None)}")
        suite = found[0]
    missing = missing_columns(suite, frame)
    if missing:
        has = ", ".join(map(str, frame.columns)) or "no columns"
        raise GateInputError(
            f"{file}: suite {suite} reads {', '.join(missing)}, which this file does not have (it has {has}); "
            + instead(file, suite)
        )
    if len(frame) > 1 and one_row_suite(suite):
        raise GateInputError(
            f"{file}: {len(frame)} rows, but suite {suite} checks one row of metrics (a per-step log is not the "
            f"measurement the gate checked); {instead(file, suite)}"
        )
    if suite == "sft_baseline" and not benchmarks:  # as the flow does: the evaluation sets' accuracies
        benchmarks = [c for c in frame.columns if str(c).endswith("_accuracy")]
    kwargs = {suite: {"benchmarks": benchmarks}} if benchmarks and suite == "sft_baseline" else None
    return evaluate(stage or suite, {SUITES[suite]: frame}, thresholds, kwargs)


def print_report(report: GateReport, console: Console) -> None:
    table = Table(
        title=f"gate {report.stage} ({', '.join(report.suites)}; rows: "
        + ", ".join(f"{v:,}" for v in report.rows.values())
        + ")"
    )
    for col in ("tier", "metric", "observed", "threshold", "detail / remedy"):
        table.add_column(col)
    for o in report.outcomes:
        note = "; ".join(x for x in (o.detail if not o.success else "", o.remedy if o.tier != "HIGH" else "") if x)
        # Styled with Text, not markup: metric names, bounds and remedies are never read as rich markup.
        table.add_row(Text(o.tier, style=TIER_STYLE[o.tier]), o.metric, _short(o.observed), o.bounds, note)
    console.print(table)
    console.print(Text("tier: ").append(report.tier, style=f"bold {TIER_STYLE[report.tier]}"))


def _short(v) -> str:
    from gates.report import _fmt

    return _fmt(v)
