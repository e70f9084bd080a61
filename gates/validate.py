"""Run suites on DataFrames with Great Expectations and turn the results into a GateReport.

No Prefect here: `evaluate` is what the CLI and the Prefect gate task both call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from gates.context import SOURCE, gx_context
from gates.report import ExpectationOutcome, GateReport
from realign.thresholds import ThresholdsConfig


def validate_frame(suite, df: pd.DataFrame):
    """Validate `df` against a GX suite; returns GX's ExpectationSuiteValidationResult."""
    source = gx_context().data_sources.get(SOURCE)
    name = suite.name
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    try:
        batch_def = asset.get_batch_definition("whole")
    except KeyError:
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    return batch.validate(suite, result_format="SUMMARY")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; NaN -> None (a value that was not computed)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _outcome(suite_name: str, res, th: ThresholdsConfig) -> ExpectationOutcome:
    cfg = res.expectation_config
    meta = cfg.meta or {}
    result = res.result or {}
    detail = ""
    if "observed_value" in result:
        observed = _plain(result["observed_value"])
    elif "unexpected_count" in result:
        observed = _plain(result["unexpected_count"])
        total = result.get("element_count")
        detail = f"{observed} of {total} rows fail"
        examples = result.get("partial_unexpected_list") or []
        if observed and examples:
            detail += f", e.g. {examples[:3]!r}"
    else:
        observed = None
    if res.exception_info and res.exception_info.get("raised_exception"):
        detail = (res.exception_info.get("exception_message") or "could not be evaluated").splitlines()[0]
    if not res.success:
        tier = "REJECT"
    elif meta.get("band") and observed is not None:
        tier = getattr(th.tiers, meta["band"]).tier_of(float(observed))
    else:
        tier = "HIGH"
    return ExpectationOutcome(
        suite=suite_name,
        expectation=cfg.type,
        metric=meta.get("metric", cfg.kwargs.get("column", cfg.type)),
        observed=observed,
        bounds=meta.get("bounds", ""),
        success=bool(res.success),
        tier=tier,
        remedy=meta.get("remedy", ""),
        detail=detail,
    )


def suite_name(suite: Callable) -> str:
    """`preference_pairs_suite` -> 'preference_pairs': the dataset the suite checks, as reports and kwargs name it."""
    return suite.__name__.removesuffix("_suite")


def evaluate(
    stage: str,
    tables: Mapping[Callable, pd.DataFrame],
    thresholds: ThresholdsConfig | None = None,
    suite_kwargs: Mapping[str, dict] | None = None,
) -> GateReport:
    """Validate each table with its suite (`tables` maps a suite function -> the frame it checks).

    Returns a GateReport whose tier is the worst tier over all expectations. suite_kwargs: dataset name ->
    extra arguments of its suite. A suite may declare `suite.prepare(frame)` to add the columns it derives.
    """
    th = thresholds or ThresholdsConfig()
    outcomes, rows, raw = [], {}, []
    for suite_fn, df in tables.items():
        name = suite_name(suite_fn)
        suite = suite_fn(th, **(suite_kwargs or {}).get(name, {}))
        frame = getattr(suite_fn, "prepare", lambda d: d)(df)
        result = validate_frame(suite, frame)
        ordered = sorted(result.results, key=lambda r: (r.expectation_config.meta or {}).get("order", 0))
        outcomes += [_outcome(name, r, th) for r in ordered]
        rows[name] = len(frame)
        raw.append(result.to_json_dict())
    return GateReport(
        stage=stage,
        suites=[suite_name(s) for s in tables],
        tier=GateReport.worst([o.tier for o in outcomes]),
        outcomes=outcomes,
        rows=rows,
        gx_results=raw,
    )
