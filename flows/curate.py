"""Curation: a request in words becomes a plan, a gated workflow run, and a curated dataset.

1. read the request: data type (SFT when unclear), model size, workflow;
2. plan: machine, batch size, split, estimated time and cost (hardware.plan);
3. run the workflow as a subflow (every stage gated; a REJECT fails the curation, nothing is published);
4. publish curated/<type>_<source>_YYYYMMDD/train.jsonl and summary.json, and a `curation-summary` artifact.
The nightly deployment (prefect.yaml: nightly-curation) runs this at 02:00.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.dpo import dpo
from gates.gate import stops_at_gates
from hardware.plan import make_plan
from hardware.sizing import parse_size
from realign.data.curation import WORKFLOW_OF, curated_dir, data_type_of
from realign.data.datasets import load_data
from realign.data.formats import read_rows, write_rows
from realign.io import write_json
from realign.model.load import model_root
from realign.recipes.dpo import DPOWorkflowConfig


def plan_for(request: str, model_dir: str | None, examples: int) -> dict:
    """The run plan for the model the request names ("Qwen 7B"), else for the model directory; {} if neither known."""
    try:
        model = f"{parse_size(request):g}B"
    except ValueError:
        model = model_dir if model_dir and (model_root(model_dir) / "config.json").is_file() else None
    return make_plan(model, examples).as_dict() if model else {}


@stops_at_gates
@flow(name="curate", log_prints=True)
def curate(
    request: str,
    config: DPOWorkflowConfig = DPOWorkflowConfig(),
    source_name: str = "data",
    curated_root: str = "curated",
) -> dict:
    log = get_run_logger()
    # 1. The request.
    data_type = data_type_of(request)
    workflow = WORKFLOW_OF[data_type]
    log.info(f"request {request!r}: data type {data_type}, workflow {workflow}")
    if workflow != "dpo":
        raise NotImplementedError(
            f"request asks for {data_type} data (workflow '{workflow}'), which realign cannot run yet; "
            f"only DPO curation is available. Say 'DPO' or 'preference pairs' in the request for DPO data."
        )
    out = curated_dir(curated_root, data_type, source_name)
    run_name = config.run_name or f"curate-{out.name}"
    # 2. The plan, before the run when the model's size is known from the request or its directory.
    # Examples = the preference prompts of a round, counted from the data itself (embedded or the user's file).
    examples = len(load_data(config.data).prompts)
    plan = plan_for(request, config.model.path if config.model.path != "tiny" else None, examples)

    # 3. The gated workflow run.
    summary = dpo(config.model_copy(update={"run_name": run_name}))
    if not plan:
        # A tiny model is built by stage 1: plan for the model that was actually used.
        plan = plan_for(
            request, str(Path(summary["run_dir"]) / "01_sft_preparation" / "base_model"), summary["examples_processed"]
        )

    # 4. Publish the curated dataset (only reached when every gate passed or was approved).
    rows = [r for path in summary["train_jsonl"] for r in read_rows(path, "dpo")]
    n = write_rows(out / "train.jsonl", rows, "dpo")
    result = {
        "request": request,
        "data_type": data_type,
        "workflow": workflow,
        "tier": summary["tier"],
        "examples": n,
        "examples_processed": summary["examples_processed"],
        "machine": summary["machine"],
        "batch_size": summary["generation_batch_size"],
        "time_s": summary["wall_time_s"],
        "cost_per_example": summary["cost_per_example"],
        "cost_note": summary["cost_note"],
        "output": str(out / "train.jsonl"),
        "run_dir": summary["run_dir"],
        "plan": {
            k: plan.get(k)
            for k in (
                "model",
                "params_b",
                "machines",
                "mode",
                "batch_size",
                "split",
                "estimated_seconds",
                "throughput_source",
            )
        }
        if plan
        else None,
    }
    write_json(out / "summary.json", result)
    log.info(f"curated {n} {data_type} rows -> {out / 'train.jsonl'} (tier {summary['tier']})")
    if FlowRunContext.get() is not None:
        create_markdown_artifact(
            key="curation-summary",
            markdown=f"# Curation: **{summary['tier']}**\n\n> {request}\n\n| field | value |\n|---|---|\n"
            + "\n".join(f"| {k} | {v if not isinstance(v, dict) else json.dumps(v)} |" for k, v in result.items()),
            description=f"curated {n} {data_type} rows",
        )
    return result
