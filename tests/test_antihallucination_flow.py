"""The anti-hallucination workflow's seven stages under prefect_test_harness, on the tiny model and the embedded
synthetic world."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.antihallucination import antihallucination
from gates.gate import GateFailed
from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig

# Small and fast; thresholds on the model's results relaxed so the test exercises the plumbing (the real ones are
# exercised by the gate tests and by `realign demo antihallucination`). The data's citation gate keeps its threshold.
SMALL = {
    "data": {"n_people": 100, "n_prompts": 200, "n_sft_target": 200, "n_sft_benchmark": 1200,
             "n_prompts_benchmark": 50, "n_eval": 40, "n_dev": 30},
    "sft": {"train": {"steps": 150, "batch_size": 32, "learning_rate": 3e-4, "lora": None, "metrics_every": 50}},
    "citation": {"train": {"steps": 60, "batch_size": 32, "learning_rate": 1e-3, "lora": None, "metrics_every": 50}},
    "detection": {"generation": {"n": 2, "batch_size": 64, "max_tokens": 8, "temperature": 1.0}, "max_items": 60},
    "optimization": {"train": {"steps": 4, "batch_size": 4, "learning_rate": 1e-5, "lora": None,
                               "checkpoint_every": 2, "metrics_every": 2}},
    "iterations": {"max_rounds": 1},
    "eval_max_tokens": 8,
    "thresholds": {
        "sft": {"max_perplexity": 1000},
        "factuality": {"min_factuality": 0.0, "max_hallucination_rate": 1.0, "min_factuality_gain": -1.0,
                       "max_hallucination_change": 1.0},
        "tiers": {"calibration_error": {"direction": "lower", "high": 1.0, "medium": 1.0}},
        "optimization": {"max_kl": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def config(tmp_path: Path, name: str, **changes) -> AntiHallucinationWorkflowConfig:
    data = json.loads(json.dumps(SMALL))
    data.update(changes)
    return AntiHallucinationWorkflowConfig.model_validate({**data, "run_name": name, "runs_root": str(tmp_path)})


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_seven_antihallucination_stages_run_and_report(tmp_path):
    summary = antihallucination(config(tmp_path, "ah-small"))
    run = Path(summary["run_dir"])
    stages = ["1-sft-preparation", "2-factuality-data-collection", "3-citation-training", "4-hallucination-detection",
              "5-grounding-optimization", "6-iterative-training", "7-evaluation"]  # fmt: skip
    assert list(summary["gate_tiers"]) == stages
    for n, stage in enumerate(stages, start=1):
        assert (run / f"{n:02d}_{stage.split('-', 1)[1].replace('-', '_')}").is_dir(), stage
    # stage 1: the baseline hallucination rate and calibration of the stage-1 model, from its own answers
    baseline = json.loads((run / "01_sft_preparation" / "baseline_metrics.json").read_text())
    assert 0.0 <= baseline["grounded_hallucination_rate"] <= 1.0 and "grounded_calibration_error" in baseline
    # stage 2: the embedded world's citations all hold; answerable and unanswerable questions
    data = json.loads((run / "02_factuality_data_collection" / "factuality_data.json").read_text())
    assert data["citation_accuracy"] == 1.0 and data["rejected"] == 0
    assert data["answerable"] > 0 and data["unanswerable"] > 0 and data["questions"] == 200
    sft = jsonl(run / "02_factuality_data_collection" / "cited_sft.jsonl")
    assert any(r["output"] == "I don't know" for r in sft) and any(r["output"].endswith("]") for r in sft)
    # stage 4: every sample judged; pairs prefer the judged-good sample (or the reference) to a bad one
    samples = jsonl(run / "04_hallucination_detection" / "samples.jsonl")
    assert len(samples) == 120 and {s["verdict"] for s in samples} <= {
        "good", "wrong", "uncited", "invented", "abstained", "empty"}  # fmt: skip
    verdicts = {(s["prompt"], s["sample"]): s["verdict"] for s in samples}
    for p in jsonl(run / "04_hallucination_detection" / "pairs.jsonl"):
        assert verdicts[(p["prompt"], p["rejected"])] not in ("good", "empty")
        assert verdicts.get((p["prompt"], p["chosen"]), "good") == "good"
    assert (run / "04_hallucination_detection" / "reliability.png").stat().st_size > 0
    # stage 5 trained (or said why not); stage 7 reports the grounded metrics before/after with intervals
    held = json.loads((run / "05_grounding_optimization" / "held_out.json").read_text())
    assert {"before", "after"} <= set(held)
    results = summary["results"]
    for k in ("grounded_hallucination_rate", "grounded_factuality", "grounded_citation_accuracy",
              "grounded_calibration_error"):  # fmt: skip
        assert f"before/{k}" in results and f"after/{k}" in results
    texts = [c["text"] for c in summary["comparisons"]]
    assert any("after - before on hallucination_rate" in t and "95% CI" in t for t in texts)
    assert any("after - before on calibration_error" in t for t in texts)
    assert any("after - before on citation_accuracy (questions both answered right)" in t for t in texts)
    assert {Path(p).name for p in summary["plots"]} >= {"reliability_after.png", "reliability_before.png"}
    assert summary["gate_tiers"]["7-evaluation"] in ("HIGH", "MEDIUM")
    metrics = pd.read_parquet(run / "03_citation_training" / "metrics.parquet")
    assert len(metrics) == 60


@pytest.mark.slow
def test_gate_4_rejects_the_hallucination_rate_naming_metric_value_threshold_and_remedy(tmp_path):
    th = json.loads(json.dumps(SMALL["thresholds"]))
    th["factuality"]["max_hallucination_rate"] = 0.0  # strictly below 0: no model passes
    with pytest.raises(GateFailed) as info:
        antihallucination(config(tmp_path, "ah-reject", thresholds=th))
    message = str(info.value)
    assert "hallucination_rate" in message and "< 0" in message and "abstention" in message
    assert not (tmp_path / "ah-reject" / "05_grounding_optimization").exists()  # nothing ran past the gate
