"""The RLVR workflow's seven stages under prefect_test_harness, on the tiny model and the embedded digit tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.rlvr import rlvr
from gates.gate import GateFailed
from realign.recipes.rlvr import RLVRWorkflowConfig

# Small and fast; thresholds on the model's results relaxed so the test exercises the plumbing (the real ones are
# exercised by the gate tests and by `realign demo rlvr`). The verifier's own gates keep their real thresholds.
SMALL = {
    "data": {"n_prompts": 60, "n_prompts_benchmark": 30, "n_sft_target": 600, "n_sft_benchmark": 1200, "n_eval": 40,
             "n_dev": 20},
    "sft": {"train": {"steps": 150, "batch_size": 32, "learning_rate": 3e-4, "lora": None, "metrics_every": 50}},
    "verifier": {"kind": "exact"},
    "samples": {"generation": {"n": 4, "batch_size": 64, "max_tokens": 10, "temperature": 1.0}},
    "rl": {
        "rl": {
            "num_generations": 4,
            "max_completion_length": 8,
            "train": {"steps": 4, "batch_size": 4, "learning_rate": 1e-5, "lora": None, "checkpoint_every": 2},
        },
        "probe_prompts": 16,
    },
    "iterations": {"max_rounds": 1},
    "thresholds": {
        "sft": {"max_perplexity": 1000},
        "verifiable": {"min_coverage": 0.0, "min_verified_rate_gain": -1.0},
        "optimization": {"max_kl": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def config(tmp_path: Path, name: str, **changes) -> RLVRWorkflowConfig:
    data = json.loads(json.dumps(SMALL))
    data.update(changes)
    return RLVRWorkflowConfig.model_validate({**data, "run_name": name, "runs_root": str(tmp_path)})


@pytest.mark.slow
def test_the_seven_rlvr_stages_run_and_report(tmp_path):
    summary = rlvr(config(tmp_path, "rlvr-small"))
    run = Path(summary["run_dir"])
    for d in (
        "01_sft_preparation",
        "02_verifiable_task_design",
        "03_automated_verification",
        "04_verifiable_data_generation",
        "05_rlvr_optimization",
        "06_iterative_training",
        "07_evaluation",
    ):
        assert (run / d).is_dir(), d  # fmt: skip
    assert set(summary["gate_tiers"]) >= {"1-sft-preparation", "2-verifiable-task-design", "3-automated-verification",
                                          "4-verifiable-data-generation", "5-rlvr-optimization", "6-iterative-training",
                                          "7-evaluation"}  # fmt: skip
    # the exact verifier on digit strings: every task verifiable, no known-wrong answer accepted
    assert summary["verifiability"] == 1.0 and summary["false_positive_rate"] == 0.0
    assert 0.0 <= summary["coverage"][0] <= 1.0
    rows = [json.loads(x) for x in (run / "04_verifiable_data_generation" / "rlvr.jsonl").read_text().splitlines()]
    assert len(rows) == 90 and all(len(r["responses"]) == 4 for r in rows)
    grpo = [json.loads(x) for x in (run / "04_verifiable_data_generation" / "grpo.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in grpo] == [r["problem"] for r in rows]
    # the graded labels are the verifier's: an exact match of the reference
    for r in rows:
        for resp in r["responses"]:
            assert resp["correct"] == (resp["text"].strip() == r["solution"].strip())
    assert summary["comparisons"] and "95% CI" in summary["comparisons"][0]["text"]
    assert summary["training_steps"] == 4
    # per-step curves: the reward of a 0/1 verifier is the samples' verified rate
    metrics = pd.read_parquet(run / "05_rlvr_optimization" / "metrics.parquet")
    assert len(metrics) == 4 and (metrics["verified_rate"] == metrics["reward"]).all()
    assert {Path(p).name for p in summary["plots"]} >= {"training_curves.png", "before_after.png"}
    # stage 3's FP/FN table by probe kind: every known-wrong kind rejected, every rewrite accepted
    table = pd.read_parquet(run / "03_automated_verification" / "verifier_errors.parquet")
    assert {"wrong: changed digit", "wrong: hedged", "rewrite: final period"} <= set(table["probe_kind"])
    assert (table["error_rate"] == 0).all()


@pytest.mark.slow
def test_gate_3_rejects_a_false_positive_rate_at_its_threshold_naming_metric_value_and_remedy(tmp_path):
    th = json.loads(json.dumps(SMALL["thresholds"]))
    th["verifiable"]["max_false_positive_rate"] = 0.0  # strictly below 0: no verifier can pass
    with pytest.raises(GateFailed) as info:
        rlvr(config(tmp_path, "rlvr-fp", thresholds=th))
    message = str(info.value)
    assert "false_positive_rate" in message and "stricter" in message
    assert not (tmp_path / "rlvr-fp" / "04_verifiable_data_generation").exists()  # nothing ran past the gate
