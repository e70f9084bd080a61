"""What a gate found: one outcome per expectation, the gate's tier, and renderings of both."""

from __future__ import annotations

import math
import re
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
    artifact_id: str | None = Field(None, description="The report's markdown artifact in Prefect (None outside a run).")

    def __repr__(self) -> str:
        # Short: Prefect logs a failed gate task's state, report included; the message already says what failed.
        return f"GateReport(stage={self.stage!r}, tier={self.tier!r}, {len(self.outcomes)} expectations)"

    @staticmethod
    def worst(tiers: list[Tier]) -> Tier:
        return max(tiers, key=TIER_ORDER.__getitem__) if tiers else "HIGH"

    def by_tier(self, tier: Tier) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.tier == tier]

    def table_rows(self) -> list[dict]:
        """One row per expectation for the Prefect table artifact, in reading order (metric, value, threshold, tier,
        remedy), worst tier first; cells are escaped markdown (the UI renders them) and numbers rounded for display
        (the JSON report keeps full precision)."""
        return [
            {
                "metric": md_escape(o.metric),
                "value": md_escape(_fmt(o.observed)),
                "threshold": md_escape(o.bounds),
                "tier": o.tier,
                "remedy": md_escape(o.remedy if o.tier != "HIGH" else ""),
                "detail": md_escape(o.detail if not o.success else ""),
                "suite": md_escape(o.suite),
            }
            for o in self._worst_first()
        ]

    def _worst_first(self) -> list[ExpectationOutcome]:
        return sorted(self.outcomes, key=lambda o: -TIER_ORDER[o.tier])

    def headline(self) -> str:
        """One line for artifact cards, the failing metrics first so a cut card still names them in full:
        'REJECT: pairs = 0 (needs >= 20) · gate 2-preference-data'."""
        bad = [f"{o.metric} = {_fmt(o.observed)} (needs {o.bounds})" for o in self._worst_first() if o.tier != "HIGH"]
        if not bad:
            return f"{self.tier}: {len(self.outcomes)} checks passed · gate {self.stage}"
        return f"{self.tier}: {'; '.join(bad)} · gate {self.stage}"

    def failure_message(self) -> str:
        """Lines naming stage, metric, observed value, threshold and remedy for every non-HIGH outcome."""
        lines = [f"Gate {self.stage}: {self.tier}"]
        for o in self._worst_first():
            if o.tier == "HIGH":
                continue
            lines.append(
                f"- [{o.tier}] {o.metric} = {_fmt(o.observed)} (threshold: {o.bounds})"
                + (f"; {o.detail}" if o.detail else "")
                + (f". Remedy: {o.remedy}" if o.remedy else "")
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report for the run's page: the verdict, then metric / value / threshold / tier / remedy, worst first."""
        icon = {"HIGH": "✅", "MEDIUM": "⚠️", "REJECT": "❌"}[self.tier]
        out = [f"# {icon} Gate {md_escape(self.stage)}: **{self.tier}**", ""]
        bad = [o for o in self._worst_first() if o.tier != "HIGH"]
        if bad:
            out += [
                f"**{md_escape(o.metric)} = {md_escape(_fmt(o.observed))}** (needs {md_escape(o.bounds)})" for o in bad
            ]
            out.append("")
        out.append(
            "Suites: "
            + ", ".join(md_escape(s) for s in self.suites)
            + "; rows: "
            + ", ".join(f"{md_escape(k)} {v:,}" for k, v in self.rows.items())
        )
        out.append("")
        out.append("| metric | value | threshold | tier | remedy |")
        out.append("|---|---|---|---|---|")
        for row in self.table_rows():
            remedy = "; ".join(x for x in (row["detail"], row["remedy"]) if x)
            out.append(f"| {row['metric']} | {row['value']} | {row['threshold']} | {row['tier']} | {remedy} |")
        return "\n".join(out)

    def write_json(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        return write_json(path, self.model_dump(mode="json"))


# Characters markdown reads as syntax anywhere, and list markers it reads at the start of a cell or line: a threshold
# such as ">= 0" would otherwise render as a block quote, "- x" as a list.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>#|~])")


def md_escape(text: str) -> str:
    """`text` shown literally by a markdown renderer (the Prefect UI's artifacts): syntax backslash-escaped,
    newlines as spaces (a table cell is one line)."""
    out = _MD_INLINE.sub(r"\\\1", str(text)).replace("\n", " ")
    # "- x" and "1. x" start lists: escape the marker's last character ("\\- x", "1\\. x").
    m = re.match(r"^(\s*)([-+])(?=\s|$)|^(\s*\d+)([.)])(?=\s|$)", out)
    if m:
        head, mark = (m.group(1), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
        out = head + "\\" + mark + out[m.end() :]
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "not computed" if math.isnan(value) else f"{value:.4g}"
    return str(value)
