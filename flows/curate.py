"""Curation: a request in words and documents become a plan, a gated workflow run, and a curated dataset.

1. the decision: data type (SFT when unclear) and why, model size, workflow, plan (tasks/curate/decision.py);
2. the documents (PDF, Markdown, text, HTML, JSONL) -> passages with stable ids -> the data type's items, written as
   the workflow's data files; with `new_only`, only the files added or changed since the last curation of these
   sources (remembered in ROOT/.state/), skipping cleanly when there are none;
3. the plan's environment (MLX_METAL_PREALLOCATE, MLX_METAL_FAST_SYNCH, TOKENIZERS_PARALLELISM) for this process
   and the workers it starts;
4. the workflow as a subflow, every stage gated (SFT: the SRF workflow's data gate, quality_score tiers); a REJECT
   fails the curation and nothing is published;
5. curated/<type>_<source>_YYYYMMDD/train.jsonl (appended to when it exists: the nightly set of the day),
   rejects.jsonl, summary.json and a `curation-summary` artifact.
The nightly deployment (prefect.yaml: nightly-curation) runs this at 02:00 on a folder with new_only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.antihallucination import antihallucination
from flows.dpo import dpo
from flows.rlvr import rlvr
from flows.srf import srf
from gates.gate import gate, stops_at_gates
from gates.suites.srf import sft_quality_suite
from hardware.config import HardwareConfig
from realign.data.doc_items import ItemsConfig
from realign.data.documents import document_files
from realign.io import write_json
from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig
from realign.recipes.dpo import DPOWorkflowConfig
from realign.recipes.rlvr import RLVRWorkflowConfig
from realign.recipes.srf import SRFWorkflowConfig
from realign.thresholds import ThresholdsConfig
from tasks.curate.decision import decide, model_for_plan, plan_dict, understood_with_model
from tasks.curate.items import collect_items, curated_rows, new_files, publish, read_state, remember, state_path

CONFIG_OF = {
    "dpo": DPOWorkflowConfig,
    "srf": SRFWorkflowConfig,
    "rlvr": RLVRWorkflowConfig,
    "antihallucination": AntiHallucinationWorkflowConfig,
}
FLOW_OF = {"dpo": dpo, "srf": srf, "rlvr": rlvr, "antihallucination": antihallucination}


def merged(base: dict, overrides: dict) -> dict:
    """`overrides` laid over `base`, mappings merged key by key (the user's recipe wins)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@stops_at_gates
@flow(name="curate", log_prints=True)
def curate(
    request: str,
    sources: list[str] | None = None,
    model: str | None = None,
    config: dict[str, Any] | None = None,
    curated_root: str = "curated",
    runs_root: str = "runs",
    new_only: bool = False,
    price_per_hour: float | None = None,
    items: ItemsConfig = ItemsConfig(),
) -> dict:
    """Curate the data a request asks for from documents; returns the summary (also OUT/summary.json).

    request: what to curate, in words. sources: files and folders (default: the paths the request names).
    model: a model directory or hub id (default: config's model.path, else 'tiny'). config: the workflow recipe's
    fields to set (its `data` is made from the documents; sft reads `thresholds` and `approve_medium`).
    new_only: curate only the files added or changed since the last curation of these sources (the nightly run)."""
    log = get_run_logger()
    t0 = time.perf_counter()
    config = dict(config or {})
    if not isinstance(config.get("model", {}), dict):
        raise ValueError(f"config.model: expected a mapping such as {{'path': DIR}}, got {config['model']!r}")
    model = model or config.get("model", {}).get("path") or "tiny"
    # 1. The decision.
    d = decide(request, sources, model, curated_root, price_per_hour, items, count=False)
    kind, workflow, srcs = d["data_type"], d["workflow"], d["sources"]
    log.info(f"request {request!r}: data type {kind} ({d['data_type_reason']}); workflow {workflow}")
    log.info(f"model size: {d['size_reason']}")
    if not srcs:
        raise ValueError(
            "no documents: pass sources (files or folders), or name a file in the request (from notes.pdf)"
        )
    out = Path(d["output"]).parent

    # 2. The documents (the new ones for the nightly run) and their items.
    state_file = state_path(curated_root, kind, srcs[0])
    state = read_state(state_file) if new_only else {}
    files, unchanged, digests = new_files(srcs, state) if new_only else (document_files(srcs), [], {})
    if not files:
        reason = f"no new documents in {', '.join(srcs)} since the last curation ({len(unchanged)} unchanged)"
        log.info(f"{reason}: nothing to do")
        return {"request": request, "data_type": kind, "workflow": workflow, "skipped": True, "reason": reason}
    name = f"curate-{out.name}-{time.strftime('%H%M%S')}"
    built = collect_items(kind, [str(f) for f in files], items, str(Path(runs_root) / name / "00_curation"))
    log.info(
        f"{len(files)} document(s), {len(unchanged)} unchanged left out: {built.passages} passages, "
        f"{built.train_questions} training and {built.held_out_questions} held-out questions, "
        f"{len(built.rejects)} rejected (with the reason in rejects.jsonl)"
    )

    # 3. The plan, for the examples the documents gave, and its environment for this process and its workers.
    plan = plan_dict(
        model_for_plan(understood_with_model(request, model), model), built.train_questions, price_per_hour
    )
    env = (plan or {}).get("environment") or dict(HardwareConfig().environment)
    os.environ.update({k: str(v) for k, v in env.items()})
    log.info(f"environment: {env}")

    # 4. The gated run.
    if kind == "sft":  # the SRF workflow's data stage: the SFT rows, tiered by quality_score
        th = ThresholdsConfig.model_validate(config.get("thresholds", {}))
        report = gate(
            "0-sft-quality",
            {sft_quality_suite: built.tables()["sft_quality"]},
            th,
            out_dir=Path(built.out_dir),
            approve_medium=bool(config.get("approve_medium", False)),
        )
        summary = {
            "tier": report.tier,
            # the SFT rows scored (cloze answers and continuations), counted from the file the gate read
            "examples_processed": len(built.tables()["sft_quality"]),
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "cost_per_example": None,
            "cost_note": "no model ran: the rows are extracted and scored by the quality rubric",
            "run_dir": str(Path(built.out_dir).parent.resolve()),
        }
    else:
        base = {
            "run_name": name,
            "runs_root": runs_root,
            "model": {**config.get("model", {}), "path": model},
            "data": built.data,
            **({"pairs": {"scorer": "verifier"}} if kind in ("dpo", "srf") else {}),
            **({"price_per_hour": price_per_hour} if price_per_hour is not None else {}),
        }
        overrides = {k: v for k, v in config.items() if k not in ("data", "model", "run_name", "runs_root")}
        summary = FLOW_OF[kind](CONFIG_OF[kind].model_validate(merged(base, overrides)))
        if plan is None:  # the tiny model was built by stage 1: plan for the model the run used
            plan = plan_dict(str(Path(summary["run_dir"]) / "01_sft_preparation" / "base_model"), built.train_questions)

    # 5. Publish (reached only when every gate passed or was approved).
    added, total = publish(str(out), curated_rows(kind, summary, built), kind, built.rejects)
    if new_only:
        remember(state_file, state, digests)
    result = {
        "request": request,
        "data_type": kind,
        "data_type_reason": d["data_type_reason"],
        "workflow": workflow,
        "tier": summary["tier"],
        "examples_processed": summary["examples_processed"],
        "examples": added,
        "examples_in_file": total,
        "machine": (plan or {}).get("machines"),
        "batch_size": (plan or {}).get("batch_size"),
        "time_s": round(time.perf_counter() - t0, 1),
        "cost_per_example": summary["cost_per_example"],
        "cost_note": summary["cost_note"],
        "params_b": (plan or {}).get("params_b", d["params_b"]),
        "size_reason": d["size_reason"],
        "documents": built.documents,
        "documents_unchanged": len(unchanged),
        "passages": built.passages,
        "rejected": len(built.rejects),
        "output": str(out / "train.jsonl"),
        "rejects": str(out / "rejects.jsonl"),
        "run_dir": summary["run_dir"],
        "environment": env,
        "plan": plan,
    }
    write_json(out / "summary.json", result)
    log.info(f"curated {added} {kind} rows -> {result['output']} (tier {summary['tier']}, {total} in the file)")
    if FlowRunContext.get() is not None:
        rows = "\n".join(
            f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |"
            for k, v in result.items()
            if k not in ("plan", "environment")
        )
        create_markdown_artifact(
            key="curation-summary",
            markdown=f"# Curation: **{summary['tier']}**\n\n> {request}\n\n| field | value |\n|---|---|\n{rows}",
            description=f"curated {added} {kind} rows",
        )
    return result
