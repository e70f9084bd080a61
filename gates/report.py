"""What a gate found: one outcome per expectation, the gate's tier, and renderings of both."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from realign.io import write_json
from realign.thresholds import TIER_ORDER, Tier


class ExpectationOutcome(BaseModel):
    """One expectation's verdict.

    metric: what was measured (a column or a named metric); observed: the value
    (None when it could not be computed); bounds: the threshold(s) in words;
    tier: HIGH/MEDIUM/REJECT for this expectation; remedy: what to do on failure.
    """

    suite: str
    expectation: str
    metric: str
    observed: Any = None
    bounds: str
    success: bool
    tier: Tier
    remedy: str = ""
    detail: str = ""


class GateReport(BaseModel):
    """The verdict of one stage's gate: the worst tier of its expectations."""

    stage: str
    suites: list[str]
    tier: Tier
    outcomes: list[ExpectationOutcome]
    rows: dict[str, int] = Field(default_factory=dict, description="Rows validated per suite.")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    approval: str | None = Field(None, description="A reviewer's decision on a MEDIUM gate, when one was asked for.")
    gx_results: list[dict] = Field(default_factory=list, description="Raw GX validation results (for Data Docs).")

    @staticmethod
    def worst(tiers: list[Tier]) -> Tier:
        return max(tiers, key=TIER_ORDER.__getitem__) if tiers else "HIGH"

    def by_tier(self, tier: Tier) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.tier == tier]

    def table_rows(self) -> list[dict]:
        """One row per expectation, for the Prefect table artifact and the CLI."""
        return [
            {
                "suite": o.suite,
                "expectation": o.expectation,
                "metric": o.metric,
                "observed": _fmt(o.observed),
                "bounds": o.bounds,
                "success": o.success,
                "tier": o.tier,
                "remedy": o.remedy if o.tier != "HIGH" else "",
            }
            for o in self.outcomes
        ]

    def headline(self) -> str:
        """One line for artifact cards: the tier and every metric that is not HIGH, with value and threshold."""
        bad = [f"{o.metric} = {_fmt(o.observed)} (needs {o.bounds})" for o in self.outcomes if o.tier != "HIGH"]
        return f"Gate {self.stage}: {self.tier}" + (
            ": " + "; ".join(bad) if bad else f" ({len(self.outcomes)} checks passed)"
        )

    def failure_message(self) -> str:
        """Lines naming stage, metric, observed value, threshold and remedy for every non-HIGH outcome."""
        lines = [f"Gate {self.stage}: {self.tier}"]
        for o in self.outcomes:
            if o.tier == "HIGH":
                continue
            lines.append(
                f"- [{o.tier}] {o.metric} = {_fmt(o.observed)} (threshold: {o.bounds})"
                + (f"; {o.detail}" if o.detail else "")
                + (f". Remedy: {o.remedy}" if o.remedy else "")
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        """A short summary for the run's page."""
        icon = {"HIGH": "✅", "MEDIUM": "⚠️", "REJECT": "❌"}[self.tier]
        out = [f"# {icon} Gate `{self.stage}`: **{self.tier}**", ""]
        out.append(
            f"Suites: {', '.join(f'`{s}`' for s in self.suites)}; rows: "
            + ", ".join(f"{k}={v}" for k, v in self.rows.items())
        )
        out.append("")
        out.append("| tier | metric | observed | threshold | remedy |")
        out.append("|---|---|---|---|---|")
        for o in sorted(self.outcomes, key=lambda o: -TIER_ORDER[o.tier]):
            out.append(
                f"| {o.tier} | {o.metric} | {_fmt(o.observed)} | {o.bounds} | {o.remedy if o.tier != 'HIGH' else ''} |"
            )
        return "\n".join(out)

    def write_json(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        return write_json(path, self.model_dump(mode="json"))


def _fmt(value: Any) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "not computed" if math.isnan(value) else f"{value:.4g}"
    return str(value)
