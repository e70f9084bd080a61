"""prefect.yaml: a deployment per workflow, shard deployments pinned to the machine pools, the nightly
curation schedule; parameters equal the recipes in deployments/ and validate against the flows."""

from __future__ import annotations

import importlib

import yaml

from conftest import REPO
from realign.recipes.abliterate import AbliterationWorkflowConfig
from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig
from realign.recipes.dpo import DPOWorkflowConfig
from realign.recipes.rlvr import RLVRWorkflowConfig
from realign.recipes.srf import SRFWorkflowConfig

DOC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in DOC["deployments"]}


def recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "deployments" / f"{name}.yaml").read_text())


def test_every_deployment_names_a_real_flow_and_a_pool():
    expected = {
        "dpo-demo": ("dpo", "realign"),
        "srf-demo": ("srf", "realign"),
        "rlvr-demo": ("rlvr", "realign"),
        "antihallucination-demo": ("antihallucination", "realign"),
        "abliterate-demo": ("abliterate", "realign"),
        "nightly-curation": ("curate", "realign"),
        "shard-m4-max": ("shard", "m4-max"),
        "shard-m3-ultra": ("shard", "m3-ultra"),
    }
    assert set(DEPLOYMENTS) == set(expected)
    for name, (flow_name, pool) in expected.items():
        path, func = DEPLOYMENTS[name]["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, func).name == flow_name, name
        assert DEPLOYMENTS[name]["work_pool"]["name"] == pool, name


def test_parameters_are_the_recipes():
    assert DEPLOYMENTS["dpo-demo"]["parameters"] == {"config": recipe("dpo-demo")["config"]}
    assert DEPLOYMENTS["srf-demo"]["parameters"] == {"config": recipe("srf-demo")["config"]}
    SRFWorkflowConfig.model_validate(DEPLOYMENTS["srf-demo"]["parameters"]["config"])
    assert DEPLOYMENTS["rlvr-demo"]["parameters"] == {"config": recipe("rlvr-demo")["config"]}
    RLVRWorkflowConfig.model_validate(DEPLOYMENTS["rlvr-demo"]["parameters"]["config"])
    ah = DEPLOYMENTS["antihallucination-demo"]["parameters"]
    assert ah == {"config": recipe("antihallucination-demo")["config"]}
    AntiHallucinationWorkflowConfig.model_validate(ah["config"])
    assert DEPLOYMENTS["abliterate-demo"]["parameters"] == {"config": recipe("abliterate-demo")["config"]}
    AbliterationWorkflowConfig.model_validate(DEPLOYMENTS["abliterate-demo"]["parameters"]["config"])
    assert DEPLOYMENTS["nightly-curation"]["parameters"] == recipe("nightly-curation")
    DPOWorkflowConfig.model_validate(DEPLOYMENTS["dpo-demo"]["parameters"]["config"])
    DPOWorkflowConfig.model_validate(DEPLOYMENTS["nightly-curation"]["parameters"]["config"])
    from flows.curate import curate

    assert set(DEPLOYMENTS["nightly-curation"]["parameters"]) <= set(curate.parameters.properties)


def test_nightly_curation_runs_at_two_in_a_configurable_zone():
    (schedule,) = DEPLOYMENTS["nightly-curation"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "{{ $REALIGN_NIGHTLY_TZ }}"


def test_runs_start_in_the_workers_checkout():
    (step,) = DOC["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $REALIGN_HOME }}"}}


def test_example_recipes_validate_with_the_files_they_name(tmp_path, monkeypatch):
    """deployments/examples/: recipes to start from. Schema and paths: the local files they name are made (empty
    models and data, as the user's would be); a hub id is not fetched."""
    from realign.recipes.dpo import load_dpo_recipe

    examples = sorted((REPO / "deployments" / "examples").glob("*.yaml"))
    assert {p.stem for p in examples} >= {"own-pairs", "quantized-mlx-community", "open-prompts-judge"}
    monkeypatch.chdir(tmp_path)
    for path in examples:
        body = yaml.safe_load(path.read_text())["config"]
        data = body["data"]
        for f in [data.get(k) for k in ("pairs", "prompts", "sft")] + [e["path"] for e in data["eval_sets"]]:
            if f:
                (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / f).write_text('{"prompt": "p", "answer": "a"}\n')
        judges = [e.get("judge_model") for e in data["eval_sets"]]
        for model in (body["model"]["path"], body.get("pairs", {}).get("judge_model"), *judges):
            if model and model.startswith("."):
                (tmp_path / model).mkdir(parents=True, exist_ok=True)
                (tmp_path / model / "config.json").write_text("{}")
        cfg = load_dpo_recipe(path)
        assert cfg.dpo.train.lora is not None and cfg.sft.train.lora is not None, path.name  # LoRA for real models
    opened = load_dpo_recipe(REPO / "deployments" / "examples" / "open-prompts-judge.yaml")
    assert opened.data.eval_sets[0].format == "open" and opened.data.eval_sets[0].scorer() == (
        "judge",
        "./models/judge",
    )
    assert opened.pairs.scorer == "judge" and opened.data.prompts == "data/prompts.jsonl"
    own = load_dpo_recipe(REPO / "deployments" / "examples" / "own-pairs.yaml")
    assert own.data.pairs == "data/prefs.jsonl" and own.pairs.scorer == "judge"
