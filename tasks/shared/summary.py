"""The run summary: what was made, how good, on what machine, at what cost; summary.json + a UI artifact."""

from __future__ import annotations

import platform
import socket
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from realign.io import write_json


def machine_description() -> str:
    return f"{socket.gethostname()} ({platform.system()} {platform.machine()}, {platform.processor() or 'cpu'})"


def _cell(value) -> str:
    """A summary value in a table cell; per-round lists of numbers (SRF's reward model and RL figures) joined."""
    if isinstance(value, list):
        return ", ".join("not computed" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def summary_markdown(run_dir: str, summary: dict) -> str:
    """The `run-summary` artifact: verdict, comparisons with intervals, the scalar facts (and per-round lists of
    numbers), the results and the plots."""
    rows = "\n".join(
        f"| {k} | {_cell(v)} |"
        for k, v in summary.items()
        if not isinstance(v, dict)
        and not (isinstance(v, list) and not (v and all(isinstance(x, (int, float, type(None))) for x in v)))
    )
    gates = "\n".join(f"| {stage} | {tier} |" for stage, tier in summary.get("gate_tiers", {}).items())
    nums = summary.get("results", {})
    res = "\n".join(f"| {k} | {v} |" for k, v in nums.items())
    compared = "\n".join(f"- {c['text']}" for c in summary.get("comparisons", []))
    return (
        f"# {summary['workflow']} run `{Path(run_dir).name}`: **{summary['tier']}**\n\n"
        f"{summary.get('verdict', '')}\n\n"
        f"## comparisons (95% paired-bootstrap intervals)\n\n{compared or 'none'}\n\n"
        f"## gates\n\n| stage | tier |\n|---|---|\n{gates}\n\n"
        f"| field | value |\n|---|---|\n{rows}\n\n## results\n\n| metric | value |\n|---|---|\n{res}\n\n"
        f"Plots: " + ", ".join(f"`{p}`" for p in summary.get("plots", []))
    )


@task(name="summary", cache_policy=NO_CACHE)
def write_summary(run_dir: str, summary: dict) -> dict:
    """Write RUN_DIR/summary.json and, inside a flow run, a markdown artifact `run-summary`."""
    path = write_json(Path(run_dir) / "summary.json", summary)
    if FlowRunContext.get() is not None:
        create_markdown_artifact(
            key="run-summary",
            markdown=summary_markdown(run_dir, summary),
            description=f"{summary['workflow']} summary",
        )
    return {**summary, "summary_path": str(path)}
