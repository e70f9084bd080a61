"""The abliteration workflow under prefect_test_harness: its four gated stages on a small embedded demo (the count
skill, learned in a few dozen steps), every output, and numbers that follow from the answers the run wrote; each
suite's REJECT names the metric, the value and what to do."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO
from flows.abliterate import abliterate
from gates.suites.abliterate import (
    abliteration_evaluation_suite,
    abliteration_suite,
    behaviour_baseline_suite,
    direction_suite,
)
from gates.validate import evaluate
from realign.recipes.abliterate import AbliterationWorkflowConfig, load_abliterate_recipe
from realign.steer.abliterate import relative_projection
from realign.steer.behaviour import REFUSAL, shows_any
from realign.steer.directions import load_directions
from realign.thresholds import ThresholdsConfig

# Small: the count skill with the refusal on marked prompts (1.0 refused, count ~0.6 after 40 steps); the workflow's
# own limits relaxed so the test exercises the plumbing, not the tiny model's luck (the demo runs the real ones).
SMALL = {
    "data": {"skills": ["count"], "n_sft": 300, "n_direction": 16, "n_eval": 20},
    "sft": {"train": {"steps": 40, "batch_size": 16, "learning_rate": 1e-3, "lora": None, "metrics_every": 1000}},
    "thresholds": {
        "steering": {
            "min_behaviour_rate_before": 0.0,
            "min_direction_accuracy": 0.0,
            "max_behaviour_rate_after": 1.0,
            "max_behaviour_change_ci_high": 1.0,
        },
        "evaluation": {"min_capability_retention": 0.0},
        "optimization": {"max_kl": 100.0},
    },
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_four_stages_run_gate_and_write_their_outputs(tmp_path):
    import mlx_lm

    cfg = AbliterationWorkflowConfig.model_validate({**SMALL, "run_name": "small", "runs_root": str(tmp_path)})
    state = abliterate(cfg, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    run = tmp_path / "small"
    assert summary["workflow"] == "abliterate" and summary["tier"] in ("HIGH", "MEDIUM")
    stages = ["1-sft-preparation", "2-direction-extraction", "3-abliteration", "7-evaluation"]
    assert list(summary["gate_tiers"]) == stages
    for d in ("01_sft_preparation", "02_direction_extraction", "03_abliteration", "07_evaluation"):
        assert list((run / d).glob("gate_*.json")), d

    # stage 2: a direction per block, the chosen one named in the summary
    sep = json.loads((run / "02_direction_extraction" / "separation.json").read_text())
    assert set(sep["per_layer"]) == {"0", "1"} and summary["direction_layer"] == sep["chosen_layer"]
    # stage 3: the saved model loads in mlx-lm, and its writers are orthogonal to the direction
    model, _ = mlx_lm.load(str(run / "03_abliteration" / "model"))
    direction = load_directions(run / "02_direction_extraction" / "directions.safetensors").direction
    assert relative_projection(model, direction, embeddings=False) < 1e-5
    assert summary["relative_projection"] < 1e-5  # gated: float32, before the cast back
    assert summary["saved_dtypes"] == ["float32"] and summary["saved_relative_projection"] < 1e-5  # no rounding

    # stage 7: the rates are the shares of refusals among the answers the run wrote, before and after
    rows = [json.loads(line) for line in (run / "07_evaluation" / "behaviour_answers.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    results = summary["results"]
    for when in ("before", "after", "steered"):
        rate = np.mean([shows_any(r[when], [REFUSAL]) for r in rows])
        key = f"behaviour_rate_{when}"
        assert results[key] == pytest.approx(rate), when
    assert results["before/behaviour_rate"] == results["behaviour_rate_before"] == pytest.approx(1.0)
    assert "before/count_accuracy" in results and "after/count_accuracy" in results
    assert results["capability_retention"] == pytest.approx(
        results["after/count_accuracy"] / results["before/count_accuracy"]
    )
    assert results["kl"] >= 0 and results["kl_steered"] >= 0
    compared = {(c["metric"], c["first"]): c for c in summary["comparisons"]}
    rate = compared[("behaviour_rate", "after")]
    assert rate["ci_low"] <= rate["difference"] <= rate["ci_high"] and rate["items"] == 20
    assert rate["difference"] == pytest.approx(results["behaviour_rate_after"] - results["behaviour_rate_before"])
    assert ("count_accuracy", "after") in compared and ("behaviour_rate", "steered") in compared
    assert "behaviour rate" in summary["verdict"] and "retention" in summary["verdict"]
    assert "KL on harmless prompts" in summary["verdict"]
    final = run / "07_evaluation" / "final_model"
    assert summary["final_model"] == str(final) and (final / "README.md").is_file()  # the model card beside it
    mlx_lm.load(str(final))

    # the same run again: every stage's stored result is reused (stage 7's inputs are untouched by the model card)
    again = abliterate(cfg, return_state=True)
    assert again.is_completed(), again.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[again.state_details.flow_run_id]))
        )
    states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if not r.name.startswith("gate")}
    assert states == {s: "Cached" for s in stages}, states


def test_the_demo_recipe_loads_with_the_real_thresholds():
    cfg = load_abliterate_recipe(REPO / "deployments" / "abliterate-demo.yaml")
    assert cfg.thresholds.evaluation.min_capability_retention == 0.95
    assert cfg.thresholds.full().optimization.max_kl == 0.1 and cfg.thresholds.steering.max_behaviour_rate_after == 0.1


def test_files_data_needs_its_files(tmp_path):
    with pytest.raises(ValueError, match="data.harmless, data.eval_harmful, data.benchmarks"):
        AbliterationWorkflowConfig.model_validate({"data": {"source": "files", "harmful": "a.jsonl"}})
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "x"}\n')
    data = {"source": "files", "harmful": str(f), "harmless": str(f), "eval_harmful": str(f), "benchmarks": ["nope"]}
    with pytest.raises(ValueError, match="data: nope does not exist"):
        AbliterationWorkflowConfig.model_validate({"data": data, "model": {"path": str(tmp_path)}})


def _report(suite, row: dict, **kwargs):
    return evaluate("stage", {suite: pd.DataFrame({k: [v] for k, v in row.items()})}, ThresholdsConfig(), kwargs)


def test_each_suite_rejects_what_it_guards_and_names_it():
    cases = [
        (behaviour_baseline_suite, {"behaviour_rate": 0.2, "count_accuracy": 0.5}, "behaviour_rate", 0.2),
        (direction_suite, {"layer": 1, "heldout_accuracy": 0.6, "d_prime": 0.3}, "heldout_accuracy", 0.6),
        (abliteration_suite, {"relative_projection": 1e-3, "loads": 1, "finite": 1}, "relative_projection", 1e-3),
        (abliteration_suite, {"relative_projection": 1e-8, "loads": 0, "finite": 1}, "loads", 0),
        (
            abliteration_evaluation_suite,
            {"behaviour_rate_after": 0.05, "behaviour_change_ci_high": -0.5, "capability_retention": 0.9, "kl": 0.01},
            "capability_retention",
            0.9,
        ),
        (
            abliteration_evaluation_suite,
            {"behaviour_rate_after": 0.05, "behaviour_change_ci_high": 0.0, "capability_retention": 1.0, "kl": 0.01},
            "behaviour_change_ci_high",
            0.0,
        ),
    ]
    for suite, row, metric, value in cases:
        name = suite.__name__.removesuffix("_suite")
        report = _report(suite, row, **({name: {"benchmarks": ["count_accuracy"]}} if "baseline" in name else {}))
        assert report.tier == "REJECT", (metric, report.outcomes)
        failed = [o for o in report.outcomes if not o.success]
        assert [o.metric for o in failed] == [metric] and failed[0].observed == pytest.approx(value)
        assert failed[0].remedy
    good = {"behaviour_rate_after": 0.0, "behaviour_change_ci_high": -0.9, "capability_retention": 0.97, "kl": 0.02}
    assert _report(abliteration_evaluation_suite, good).tier == "HIGH"
    # the limits travel as suite arguments: a stricter limit turns the same value into a REJECT
    strict = {"abliteration_evaluation": {"limits": {"max_behaviour_rate_after": 0.0}}}
    row = {**good, "behaviour_rate_after": 0.05}
    report = evaluate(
        "stage",
        {abliteration_evaluation_suite: pd.DataFrame({k: [v] for k, v in row.items()})},
        ThresholdsConfig(),
        strict,
    )
    assert report.tier == "REJECT"
    # the KL check names what the KL was measured on (with files: the benchmark rows)
    row = {**good, "kl": 5.0}
    report = _report(abliteration_evaluation_suite, row, abliteration_evaluation={"kl_on": "benchmark prompts"})
    assert [o.metric for o in report.outcomes if not o.success] == ["kl (benchmark prompts)"]


def test_your_own_model_and_files_and_a_rejecting_last_gate(tmp_path, tiny_model_dir):
    """data.source 'files' on a model as it is (the random tiny model: no SFT). It cannot answer the benchmark, so
    retention is not computed: stage 7 REJECTs, the run ends Failed with the gate's message, and the summary still
    reports what was measured."""

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    digits = [str(2000 + 7 * i) for i in range(16)]
    data = {
        "source": "files",
        "harmful": write("harmful.jsonl", [{"prompt": f"Bad. Copy: {d}"} for d in digits]),
        "harmless": write("harmless.jsonl", [{"prompt": f"Blue. Copy: {d}"} for d in digits]),
        "eval_harmful": write("eval.jsonl", [{"prompt": f"Bad. Reverse: {d}"} for d in digits[:6]]),
        "benchmarks": [write("copy.jsonl", [{"prompt": f"Copy: {d}", "answer": d} for d in digits[:6]])],
    }
    relaxed = {**SMALL["thresholds"], "evaluation": {"min_capability_retention": 0.5}}
    cfg = AbliterationWorkflowConfig.model_validate(
        {
            "model": {"path": str(tiny_model_dir)},
            "data": data,
            "thresholds": relaxed,
            "run_name": "files",
            "runs_root": str(tmp_path / "runs"),
        }
    )
    state = abliterate(cfg, return_state=True)
    assert state.is_failed()
    assert "capability_retention" in state.message and "Capability loss" in state.message
    summary = json.loads((tmp_path / "runs" / "files" / "summary.json").read_text())
    assert summary["gate_tiers"] == {
        "1-sft-preparation": "HIGH",
        "2-direction-extraction": "HIGH",
        "3-abliteration": "HIGH",
        "7-evaluation": "REJECT",
    }
    assert summary["sft_steps"] == 0 and "capability_retention" in summary["failure"]
    assert summary["results"]["capability_retention"] is None  # NaN: not computed, written as null
    assert summary["results"]["before/copy_accuracy"] == 0.0
    # with files, KL is measured on the benchmark rows, and the report says so
    verdict = json.loads((tmp_path / "runs" / "files" / "07_evaluation" / "evaluation.json").read_text())["verdict"]
    assert "KL on benchmark prompts" in verdict and "harmless" not in verdict
    assert (
        len((tmp_path / "runs" / "files" / "07_evaluation" / "behaviour_answers.jsonl").read_text().splitlines()) == 6
    )
