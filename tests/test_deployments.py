"""prefect.yaml: a deployment per workflow, shard deployments pinned to the machine pools, the nightly
curation schedule; parameters equal the recipes in deployments/ and validate against the flows."""

from __future__ import annotations

import importlib

import yaml

from conftest import REPO
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
