"""`realign gate ...`: run a suite on a file outside a flow; build Data Docs for a run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gates.report import GateReport
from gates.suites import antihallucination, dpo, rlvr, shared, srf
from gates.validate import evaluate
from realign.thresholds import ThresholdsConfig

# Users type suite names here (`realign gate check --suite NAME`); flows pass the functions themselves.
SUITES = {
    fn.__name__.removesuffix("_suite"): fn
    for module in (shared, dpo, srf, rlvr, antihallucination)
    for fn in vars(module).values()
    if callable(fn) and getattr(fn, "__module__", "") == module.__name__ and fn.__name__.endswith("_suite")
}

TIER_STYLE = {"HIGH": "green", "MEDIUM": "yellow", "REJECT": "red"}


class GateInputError(ValueError):
    """The file or thresholds given to `realign gate check` cannot be read; the message says where."""


def load_frame(path: Path) -> pd.DataFrame:
    """A JSONL or Parquet file as a DataFrame; GateInputError with FILE:LINE on a bad JSON line."""
    if not path.is_file():
        raise GateInputError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
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
    suite: str, file: Path, thresholds: ThresholdsConfig, stage: str | None = None, benchmarks: list[str] | None = None
) -> GateReport:
    if suite not in SUITES:
        raise GateInputError(f"unknown suite '{suite}'; known: {', '.join(SUITES)}")
    kwargs = {suite: {"benchmarks": benchmarks}} if benchmarks and suite == "sft_baseline" else None
    return evaluate(stage or suite, {SUITES[suite]: load_frame(file)}, thresholds, kwargs)


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
