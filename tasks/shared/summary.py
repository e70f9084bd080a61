"""The run summary: what was made, how good, on what machine, at what cost; summary.json + a UI artifact."""

from __future__ import annotations

import base64
import json
import math
import platform
import re
import socket
from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from gates.report import md_escape
from realign.io import atomic_path, write_json


def machine_description() -> str:
    return f"{socket.gethostname()} ({platform.system()} {platform.machine()}, {platform.processor() or 'cpu'})"


# Summary fields that are not measurements: None there means "none", not "not computed".
_NOT_METRICS = ("flow_run_id", "final_model", "cost_note", "run_dir", "machine")


def _number(value) -> str:
    """A number for a person: 4 significant digits (summary.json keeps full precision)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not computed"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value) -> str:
    """A summary value in a table cell; per-round lists of numbers (SRF's reward model and RL figures) joined."""
    if isinstance(value, list):
        return ", ".join(_number(v) for v in value)
    return md_escape(_number(value))


def _embedded(path: str) -> str:
    """A PNG plot inline (the UI shows it; a path on the worker's disk would be nothing to a person in a browser)."""
    p = Path(path)
    try:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
    except OSError as exc:
        return f"(plot {md_escape(p.name)} could not be read: {md_escape(str(exc))})"
    alt = re.sub(r"[^\w -]", "", p.stem)  # the UI shows alt text literally: no escapes, nothing markdown reads
    return f"### {md_escape(p.stem.replace('_', ' '))}\n\n![{alt}](data:image/png;base64,{data})"


def _evaluated(summary: dict) -> str:
    """The line that says which kind of evaluation ran (exact match, a verifier, choices, a judge's ratings)."""
    return f"**Evaluation:** {md_escape(summary['evaluation'])}\n\n" if summary.get("evaluation") else ""


def summary_markdown(run_dir: str, summary: dict, embed_plots: bool = True) -> str:
    """The `run-summary` artifact: verdict, comparisons with intervals, every stage's gate (tier, time, a link to its
    report), the scalar facts (and per-round lists of numbers), the results, and the plots inline."""
    rows = "\n".join(
        f"| {md_escape(k)} | {_cell(v) if v is not None or k not in _NOT_METRICS else 'none'} |"
        for k, v in summary.items()
        if not isinstance(v, dict)
        and k not in ("verdict", "evaluation", "comparisons", "plots", "failure")  # shown above the tables
        and not (isinstance(v, list) and not (v and all(isinstance(x, (int, float, type(None))) for x in v)))
    )
    seconds, links = summary.get("stage_seconds", {}), summary.get("gate_reports", {})
    gates = "\n".join(
        f"| {md_escape(stage)} | {tier} | {_number(round(seconds[stage], 1)) if stage in seconds else ''} | "
        + (f"[gate report](/artifacts/artifact/{links[stage]})" if links.get(stage) else "")
        + " |"
        for stage, tier in summary.get("gate_tiers", {}).items()
    )
    res = "\n".join(f"| {md_escape(k)} | {md_escape(_number(v))} |" for k, v in summary.get("results", {}).items())
    compared = "\n".join(f"- {md_escape(c['text'])}" for c in summary.get("comparisons", []))
    plots = summary.get("plots", [])
    shown = "\n\n".join(_embedded(p) for p in plots) if embed_plots else ", ".join(f"`{p}`" for p in plots)
    failure = f"**Failed:** {md_escape(summary['failure'])}\n\n" if summary.get("failure") else ""
    return (
        f"# {summary['workflow']} run {md_escape(Path(run_dir).name)}: **{summary['tier']}**\n\n{failure}"
        f"{md_escape(summary.get('verdict') or '')}\n\n{_evaluated(summary)}"
        f"## comparisons (95% paired-bootstrap intervals)\n\n{compared or 'none'}\n\n"
        f"## stages\n\n| stage | gate | seconds | report |\n|---|---|---|---|\n{gates}\n\n"
        f"## run\n\n| field | value |\n|---|---|\n{rows}\n\n"
        f"## results\n\n| metric | value |\n|---|---|\n{res}\n\n"
        f"## plots\n\n{shown or 'none'}\n"
    )


def _how_to_load(summary: dict) -> str:
    """A full model loads by its directory; merged adapters (fuse_final off) load on the model they were trained on."""
    final = Path(summary.get("final_model") or "")
    try:
        adapters = json.loads((final / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return "Load it with `mlx_lm.load(PATH_TO_THIS_DIRECTORY)`."
    base = adapters.get("model", "")
    base = str((final / base).resolve()) if base and not Path(base).is_absolute() else base
    return (
        f"These are LoRA adapters (every stage's, merged into one; rank {adapters['lora_parameters']['rank']}): load "
        f"them with `mlx_lm.load({json.dumps(base)}, adapter_path=PATH_TO_THIS_DIRECTORY)`, or fuse them with "
        "`mlx_lm.fuse`."
    )


def model_card(run_dir: str, summary: dict) -> str:
    """The final model's README.md: base model, method, training data, results with intervals, every gate's tier;
    what a person (or the Hugging Face hub) reads first about a model directory."""
    try:
        recipe = json.loads((Path(run_dir) / "recipe.json").read_text())
    except (OSError, ValueError):
        recipe = {}
    base = recipe.get("model", {}).get("path", "not recorded (no recipe.json)")
    # the hub reads base_model as a hub id: named only when it is one (not a local path or the tiny demo model)
    hub = f"base_model: {json.dumps(base)}\n" if base.count("/") == 1 and not base.startswith((".", "/", "~")) else ""
    data = recipe.get("data", {})
    given = [f"{k}: `{data[k]}`" for k in ("pairs", "prompts", "sft") if data.get(k)]
    given += [f"eval set {e['name']} ({e['role']}): `{e['path']}`" for e in data.get("eval_sets", [])]
    source = "; ".join(given) if data.get("source") == "files" or given else "realign's embedded demo tasks"
    files = ", ".join(
        f"`{Path(f).relative_to(run_dir) if Path(f).is_relative_to(run_dir) else f}`"
        for f in summary.get("train_jsonl", [])
    )
    res = "\n".join(f"| {md_escape(k)} | {md_escape(_number(v))} |" for k, v in summary.get("results", {}).items())
    gates = "\n".join(f"| {md_escape(k)} | {v} |" for k, v in summary.get("gate_tiers", {}).items())
    compared = "\n".join(f"- {md_escape(c['text'])}" for c in summary.get("comparisons", []))
    return (
        f"---\nlibrary_name: mlx\ntags: [mlx, realign, {json.dumps(summary['data_type'].lower())}]\n{hub}---\n\n"
        f"# {Path(run_dir).name}: {summary['workflow']} with realign ({summary['tier']})\n\n"
        f"- **Base model:** `{base}`\n- **Method:** {summary['workflow']} workflow ({summary['data_type']}), "
        f"{summary.get('rounds', 1)} round(s)\n- **Data:** {source}\n- **Training files:** {files or 'none'}\n"
        f"- **Machine:** {summary['machine']}\n\n{md_escape(summary.get('verdict') or '')}\n\n"
        f"{_evaluated(summary)}"
        f"## Comparisons (95% paired-bootstrap intervals)\n\n{compared or 'none'}\n\n"
        f"## Results\n\n| metric | value |\n|---|---|\n{res}\n\n"
        f"## Gates\n\n| stage | tier |\n|---|---|\n{gates}\n\n"
        f"{_how_to_load(summary)} The run's recipe is `recipe.json` in the run directory.\n"
    )


def write_summary(run_dir: str, summary: dict) -> dict:
    """Write RUN_DIR/summary.json, the final model's card (README.md) and, inside a flow run, the markdown artifact
    `run-summary` on the flow run itself (called from the flow, not a task, so the run's page shows it first, not
    among the tasks' gate reports)."""
    path = write_json(Path(run_dir) / "summary.json", summary)
    final = summary.get("final_model")
    if final and Path(final).is_dir():
        with atomic_path(Path(final) / "README.md", "w") as fh:
            fh.write(model_card(run_dir, summary))
    if FlowRunContext.get() is not None:
        create_markdown_artifact(
            key="run-summary",
            markdown=summary_markdown(run_dir, summary),
            description=f"{summary['workflow']} run {Path(run_dir).name}: {summary['tier']}",
        )
    return {**summary, "summary_path": str(path)}
