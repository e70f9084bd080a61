"""The curation decision, running nothing: a request (and its documents) -> data type and workflow with the
reasons, model size, plan (machine, batch size, split, mode, environment, time, cost) and output path.

What `realign curate --dry-run` prints and what flows/curate.py runs by; no Prefect here, so the CLI answers fast.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hardware.config import HardwareConfig
from hardware.plan import make_plan
from realign.data.curation import RequestUnderstanding, curated_dir, model_size_of, understand
from realign.data.doc_items import ItemsConfig, build_items
from realign.data.documents import document_files, read_documents
from realign.model.load import model_root

PLAN_FIELDS = (
    "model",
    "params_b",
    "machines",
    "mode",
    "reason",
    "batch_size",
    "split",
    "environment",
    "estimated_seconds",
    "cost",
    "cost_per_example",
    "cost_note",
    "throughput_source",
)


def model_for_plan(understood: RequestUnderstanding, model: str | None) -> str | None:
    """What hardware.plan sizes: a model directory (its config.json), else the size the request names ('7B',
    with 'qwen' or 'llama' when the request names that family, whose architecture is then assumed), else None
    (the tiny model, planned after stage 1 builds it)."""
    if model and model != "tiny" and (model_root(model) / "config.json").is_file():
        return model
    if understood.params_b is None:
        return None
    family = next((f for f in ("qwen", "llama") if f in understood.request.lower()), "")
    return f"{understood.params_b:g}B {family}".strip()


def understood_with_model(request: str, model: str | None) -> RequestUnderstanding:
    """The request read (realign.data.curation.understand); when it names no size, the size a hub id or a model name
    given with --model spells (mlx-community/Qwen2.5-7B-Instruct-4bit -> 7B). A local directory is sized from its
    config.json by the plan instead."""
    u = understand(request)
    local = model and (model == "tiny" or (model_root(model) / "config.json").is_file())
    if u.params_b is None and model and not local:
        named = model_size_of(model)
        if named.params_b is not None:
            u = replace(u, params_b=named.params_b, size_reason=f"--model {model}: {named.reason}")
    return u


def plan_dict(model: str | None, examples: int, price_per_hour: float | None = None) -> dict | None:
    """The plan's fields for the summary (None without a model to size)."""
    if model is None:
        return None
    hw = HardwareConfig()
    prices = {m.name: price_per_hour for m in hw.machines} if price_per_hour is not None else None
    plan = make_plan(model, examples, price_per_hour=prices, hw=hw).as_dict()
    return {k: plan.get(k) for k in PLAN_FIELDS}


def decide(
    request: str,
    sources: list[str] | None = None,
    model: str | None = None,
    curated_root: str = "curated",
    price_per_hour: float | None = None,
    items: ItemsConfig | None = None,
    count: bool = True,
) -> dict:
    """The whole decision for a request, running nothing: data type and workflow (with reasons), model size,
    sources, plan (machine, batch size, split, mode, environment, time, cost), output path. With `count`, the
    documents that exist are read to count the examples the plan is for."""
    u = understood_with_model(request, model)
    srcs = list(sources or []) or u.sources_named
    examples, note = None, "no documents given: the plan is for 0 examples"
    if srcs and not count:
        note = "not counted here (the run counts the documents it curates)"
    elif srcs and all(Path(s).expanduser().exists() for s in srcs):
        built = build_items(read_documents(srcs).passages, items or ItemsConfig())
        examples = len(built.train_cloze) + len(built.eval_cloze)
        note = f"{examples} questions from {len(document_files(srcs))} document(s)"
    elif srcs:
        note = f"{', '.join(s for s in srcs if not Path(s).expanduser().exists())}: not found here; plan for 0 examples"
    target = model_for_plan(u, model)
    plan = plan_dict(target, examples or 0, price_per_hour)
    if plan is None and model and model != "tiny" and u.params_b is None:
        note += f"; {model} is not a local model directory and the request names no size: no plan"
    out = curated_dir(curated_root, u.data_type, srcs[0] if srcs else "data")
    return {
        **u.as_dict(),
        "model": model or "tiny",
        "params_b": plan["params_b"] if plan else u.params_b,
        "sources": srcs,
        "examples": examples,
        "examples_note": note,
        "machine": plan["machines"] if plan else None,
        "batch_size": plan["batch_size"] if plan else None,
        "split": plan["split"] if plan else None,
        "mode": plan["mode"] if plan else None,
        "environment": plan["environment"] if plan else dict(HardwareConfig().environment),
        "estimated_seconds": plan["estimated_seconds"] if plan else None,
        "estimated_cost": plan["cost"] if plan else None,
        "cost_note": plan["cost_note"] if plan else "no model size known: no plan, so no time or cost",
        "plan": plan,
        "output": str(out / "train.jsonl"),
    }
