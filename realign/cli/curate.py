"""`realign curate "REQUEST" [--source PATH ...] [--model PATH|ID] [--dry-run] [--json]`: the curation front door."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

SUMMARY_FIELDS = (
    ("data type", "data_type"),
    ("workflow", "workflow"),
    ("tier", "tier"),
    ("examples processed", "examples_processed"),
    ("examples curated", "examples"),
    ("machine", "machine"),
    ("batch size", "batch_size"),
    ("time (s)", "time_s"),
    ("cost per example", "cost_per_example"),
    ("output", "output"),
)
DECISION_FIELDS = (
    ("data type", "data_type"),
    ("why", "data_type_reason"),
    ("workflow", "workflow"),
    ("model size (B)", "params_b"),
    ("size read from", "size_reason"),
    ("sources", "sources"),
    ("examples", "examples_note"),
    ("machine", "machine"),
    ("batch size", "batch_size"),
    ("split", "split"),
    ("mode", "mode"),
    ("environment", "environment"),
    ("estimated time (s)", "estimated_seconds"),
    ("estimated cost", "estimated_cost"),
    ("cost", "cost_note"),
    ("output", "output"),
)


def _show(value) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def curate_cmd(
    request: str = typer.Argument(..., help='What to curate, in words: "Curate DPO preference pairs from notes.pdf".'),
    source: Optional[list[Path]] = typer.Option(
        None,
        "--source",
        help="A document or folder (PDF, Markdown, text, HTML, JSONL); repeatable. Default: the "
        "files the request names.",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model directory or hub id for the run (default: the recipe's, else the tiny model)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the decision and the plan; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="Workflow recipe YAML whose fields the run takes (steps, thresholds; its data is "
        "made from the documents), optionally with `items:` (realign.data.doc_items.ItemsConfig) beside `config:`.",
    ),
    curated_root: str = typer.Option("curated", "--curated-root", help="Where curated/<type>_<source>_DATE/ go."),
    runs_root: str = typer.Option("runs", "--runs-root", help="Where the workflow's run directory goes."),
    new_only: bool = typer.Option(
        False, "--new-only", help="Only documents added or changed since the last curation of these sources."
    ),
    price_per_hour: Optional[float] = typer.Option(
        None, "--price-per-hour", min=0, help="Machine price per hour, for the cost per example."
    ),
) -> None:
    """Turn a request into a data type, workflow, machine, batch size and plan; run the gated workflow on the
    documents and write curated/<type>_<source>_YYYYMMDD/train.jsonl with its summary.

    Exit 0 when curated (or skipped: nothing new), 1 when a gate or the run failed, 2 when the input is unusable."""
    from realign.cli.main import _fail, err
    from realign.cli.main import out as console
    from realign.data.doc_items import ItemsConfig

    sources = [str(s) for s in source or []]
    overrides: dict = {}
    items = ItemsConfig()
    if config is not None:
        import yaml  # only this option reads YAML

        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            _fail(f"{config}: cannot read the recipe: {exc}")
        if not isinstance(loaded, dict) or not isinstance(loaded.get("config", loaded), dict):
            _fail(f"{config}: expected a mapping of recipe fields (optionally under `config:`)")
        overrides = dict(loaded.get("config", loaded))
        items_cfg = loaded.get("items", overrides.pop("items", None)) or {}
        try:
            items = ItemsConfig.model_validate(items_cfg)
        except ValueError as exc:
            _fail(f"{config}: items: {exc}")
    from realign.data.documents import DocumentError
    from tasks.curate.decision import decide

    try:
        model_field = overrides.get("model", {})
        if not isinstance(model_field, dict):
            _fail(f"{config}: model: expected a mapping such as `model: {{path: DIR}}`, got {model_field!r}")
        # Only a dry run reads the documents to count them: a run reads (and, with --new-only, only) the new ones.
        decision = decide(
            request, sources, model or model_field.get("path"), curated_root, price_per_hour, items, count=dry_run
        )
    except (DocumentError, ValueError) as exc:
        _fail(str(exc))
    if dry_run:
        if as_json:
            print(json.dumps(decision, indent=2, default=str))
        else:
            for label, key in DECISION_FIELDS:
                console.print(f"{label:>20}: {_show(decision[key])}", markup=False)
        return
    if not decision["sources"]:
        _fail("no documents: pass --source FILE_OR_FOLDER, or name the file in the request (from notes.pdf)")
    from realign.data.documents import document_files

    try:  # a missing or unsupported source is the user's to fix: say so before a server starts
        document_files(decision["sources"], allow_empty=new_only)
    except DocumentError as exc:
        _fail(str(exc))

    # As `realign run`: a temporary Prefect server, no telemetry, time to start on a busy machine, no leftovers.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.curate import curate
    from realign.cli.watchdog import start_watchdog

    start_watchdog()
    state = curate(
        request,
        sources=decision["sources"],
        model=model,
        config=overrides,
        curated_root=curated_root,
        runs_root=runs_root,
        new_only=new_only,
        price_per_hour=price_per_hour,
        items=items,
        return_state=True,
    )
    if not state.is_completed():
        err.print(f"curation failed: {state.message}", markup=False)
        err.print(
            f"Gate reports (gate_<stage>.json) are beside each stage's outputs under {runs_root}/; nothing was "
            f"published to {decision['output']}. Fix the cause and run again.",
            markup=False,
        )
        raise typer.Exit(1)
    result = state.result()
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif result.get("skipped"):
        console.print(f"skipped: {result['reason']}", markup=False)
    else:
        for label, key in SUMMARY_FIELDS:
            console.print(f"{label:>20}: {_show(result.get(key))}", markup=False)
