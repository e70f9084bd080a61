"""The Custom run form of every deployment: what the Prefect UI shows and sends is the recipe's own values.

The UI builds the form from the flow's parameter schema and the deployment's parameters; a field the deployment does
not set shows (and submits) the schema's default for it. So every field at every depth must carry its default in the
schema, and filling a deployment's parameters from the schema the way the form does must give the recipe pydantic
builds from the same parameters. The browser test (test_ui_browser.py) submits the real forms.
"""

from __future__ import annotations

import importlib

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from conftest import REPO

DOC = yaml.safe_load((REPO / "prefect.yaml").read_text())
WORKFLOW_DEPLOYMENTS = {
    d["name"]: d for d in DOC["deployments"] if d["name"].endswith("-demo") or d["name"] == "nightly-curation"
}


def flow_of(deployment: dict):
    path, func = deployment["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


def resolve(schema: dict, node: dict) -> dict:
    """A property's schema with its $ref (or the non-null branch of an optional) followed."""
    if "$ref" in node:
        return {**schema["definitions"][node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1 and "$ref" in branches[0]:
        return {**resolve(schema, branches[0]), **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


MISSING = object()


def form_value(schema: dict, node: dict, given=MISSING):
    """What the form holds for one field: the deployment's value, the schema's default for what it leaves out."""
    node = resolve(schema, node)
    if given is MISSING:
        if "default" not in node:
            return MISSING
        given = node["default"]
    if isinstance(given, dict) and "properties" in node:
        out = {}
        for key, prop in node["properties"].items():
            value = form_value(schema, prop, given.get(key, MISSING))
            if value is not MISSING:
                out[key] = value
        return out
    return given


def undefaulted(schema: dict, node: dict, path: str, seen: set) -> list[str]:
    """Every field under `node` whose schema has no default (the form would show it empty, or the class default)."""
    node = resolve(schema, node)
    missing = []
    for key, prop in node.get("properties", {}).items():
        where = f"{path}.{key}"
        if "default" not in prop and not (path == "" and key in node.get("required", [])):  # required: no default
            missing.append(where)
        target = resolve(schema, prop)
        name = target.get("title")
        if "properties" in target and (where, name) not in seen:
            seen.add((where, name))
            missing += undefaulted(schema, prop, where, seen)
    return missing


@pytest.mark.parametrize("name", sorted(WORKFLOW_DEPLOYMENTS))
def test_every_field_of_the_form_has_its_default(name):
    schema = parameter_schema(flow_of(WORKFLOW_DEPLOYMENTS[name]).fn).model_dump()
    # TierBand's three fields have no default of their own: every band field that holds one carries one.
    missing = [m for m in undefaulted(schema, schema, "", set()) if not m.endswith((".direction", ".high", ".medium"))]
    assert missing == []


@pytest.mark.parametrize("name", sorted(WORKFLOW_DEPLOYMENTS))
def test_the_form_unchanged_submits_the_deployments_recipe(name):
    deployment = WORKFLOW_DEPLOYMENTS[name]
    fl = flow_of(deployment)
    schema = parameter_schema(fl.fn).model_dump()
    cls = fl.fn.__annotations__["config"]
    cls = getattr(importlib.import_module(fl.fn.__module__), cls) if isinstance(cls, str) else cls
    submitted = form_value(schema, schema["properties"]["config"], deployment["parameters"]["config"])
    if not isinstance(cls, type):  # curate: `config` is a free mapping of recipe fields, laid over the workflow's own
        assert submitted == deployment["parameters"]["config"]
        return
    assert cls.model_validate(submitted) == cls.model_validate(deployment["parameters"]["config"])


def test_each_workflow_form_shows_only_its_own_thresholds():
    sections = {}
    for name in ("dpo-demo", "srf-demo", "rlvr-demo", "antihallucination-demo"):
        schema = parameter_schema(flow_of(WORKFLOW_DEPLOYMENTS[name]).fn).model_dump()
        th = resolve(schema, resolve(schema, schema["properties"]["config"])["properties"]["thresholds"])
        tiers = resolve(schema, th["properties"]["tiers"])
        sections[name] = (set(th["properties"]) - {"tiers"}, set(tiers["properties"]))
    common = {"sft", "optimization", "evaluation"}
    assert sections["dpo-demo"] == (
        common | {"preference", "reference", "reward_model"},
        {"preference_gap", "agreement_rate"},
    )
    assert sections["srf-demo"] == (common | {"preference", "reward_model"}, {"preference_gap", "agreement_rate"})
    assert sections["rlvr-demo"] == (common | {"verifiable"}, {"verifiability"})
    assert sections["antihallucination-demo"] == (common | {"factuality"}, {"calibration_error"})


def test_the_form_is_grouped_model_data_stages_thresholds():
    schema = parameter_schema(flow_of(WORKFLOW_DEPLOYMENTS["dpo-demo"]).fn).model_dump()
    props = resolve(schema, schema["properties"]["config"])["properties"]
    titles = [p.get("title", key) for key, p in props.items()]
    assert titles[titles.index("Model") :] == [
        "Model",
        "Data",
        "Stage 1 · SFT preparation",
        "Stage 2 · Preference data",
        "Stage 4 · Preference modeling",
        "Stage 5 · DPO optimization",
        "Stage 6 · Iterative training",
        "Stage 7 · Control arm",
        "Stage 7 · Answer length",
        "Stage 7 · Fuse the final model",
        "Thresholds",
    ]
    assert all(p.get("description") for p in props.values())


def test_a_recipe_with_the_full_threshold_table_still_loads():
    """An earlier run's recipe.json (or a thresholds file written for `gate check`) holds every workflow's sections:
    the other workflows' are dropped, never an error; a misspelt name still is."""
    from realign.recipes.dpo import DPOWorkflowConfig
    from realign.thresholds import ThresholdsConfig

    saved = DPOWorkflowConfig().model_dump(mode="json")
    saved["thresholds"] = ThresholdsConfig.model_validate({"preference": {"min_pairs": 7}}).model_dump(mode="json")
    loaded = DPOWorkflowConfig.model_validate(saved)
    assert loaded.thresholds.preference.min_pairs == 7 and not hasattr(loaded.thresholds, "verifiable")
    saved["thresholds"]["prefrence"] = {"min_pairs": 7}
    with pytest.raises(ValueError, match="prefrence"):
        DPOWorkflowConfig.model_validate(saved)
