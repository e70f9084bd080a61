"""flows/run.py: gates from stage results, totals over rounds, summary.json written also when the last gate rejects."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from flows.run import Run, RunBusy, _as_name
from gates.gate import GateFailed
from gates.suites.dpo import reward_model_suite
from gates.suites.shared import evaluation_suite
from realign.eval.verdict import compare
from realign.thresholds import ThresholdsConfig
from tasks.shared.evaluation import EvaluationResult
from tasks.stages import StageResult, one_row


class Fitted(StageResult):
    accuracy: float
    examples: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"reward_model": one_row(accuracy=self.accuracy)}

    def summary(self) -> dict:
        return {"examples_processed": self.examples, "paths": [self.out_dir]}


def evaluation(tmp_path, retention: float) -> EvaluationResult:
    gain = compare("t_accuracy", "after", [1, 1, 0, 1], "before", [0, 1, 0, 0])
    return EvaluationResult(
        stage="7-evaluation",
        out_dir=str(tmp_path),
        seconds=3.0,
        before={"t_accuracy": 0.25},
        after={"t_accuracy": 0.75},
        metrics={"capability_retention": retention, "decontamination": 1.0, "kl": 0.01},
        control=None,
        comparisons=[gain],
        verdict="t accuracy 0.250 -> 0.750",
        evaluation="t (target, 4 items): exact match of greedy answers",
        final_model_dir=str(tmp_path / "final"),
        plots=[],
        not_computed={},
    )


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_run_gates_stages_sums_rounds_and_writes_the_summary(tmp_path):
    @flow
    def workflow(retention: float) -> dict:
        with Run("demo", "DEMO", "r", str(tmp_path), ThresholdsConfig(), False, 3.6) as run:
            return stages(run, retention)

    def stages(run, retention):
        for rnd in (1, 2):
            run.gate(
                Fitted(
                    stage=f"4-fit-round{rnd}",
                    out_dir=str(tmp_path / f"4_{rnd}"),
                    seconds=10.0,
                    accuracy=0.9,
                    examples=50,
                ),
                reward_model_suite,
            )
        return run.finish(evaluation(tmp_path, retention), evaluation_suite, note="hello")

    summary = workflow(0.99)
    assert summary["tier"] == "HIGH" and summary["failure"] is None
    assert summary["examples_processed"] == 100 and summary["paths"] == [str(tmp_path / "4_1"), str(tmp_path / "4_2")]
    assert summary["compute_time_s"] == 23.0 and summary["throughput_examples_per_s"] == round(100 / 23, 3)
    assert summary["cost_per_example"] == pytest.approx(3.6 * 23 / 3600 / 100)
    assert summary["note"] == "hello" and summary["results"]["after/t_accuracy"] == 0.75
    assert summary["evaluation"] == "t (target, 4 items): exact match of greedy answers"
    assert summary["comparisons"][0]["text"].startswith("after - before on t_accuracy: 0.750 vs 0.250")
    assert set(summary["gate_tiers"]) == {"4-fit-round1", "4-fit-round2", "7-evaluation"}
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["tier"] == "HIGH"
    for d in ("4_1", "4_2"):
        assert (tmp_path / d / f"gate_4-fit-round{d[-1]}.json").is_file()

    # The last gate rejects: the run fails, and summary.json still says what was measured and why it failed.
    with pytest.raises(GateFailed, match="capability_retention"):
        workflow(0.5)
    written = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert written["tier"] == "REJECT" and "capability_retention" in written["failure"]
    assert written["results"]["capability_retention"] == 0.5


def test_a_stage_without_the_table_its_suite_checks_is_an_error(tmp_path):
    @flow
    def workflow():
        with Run("demo", "DEMO", "x", str(tmp_path), ThresholdsConfig(), False, None) as run:
            run.gate(
                Fitted(stage="4-fit", out_dir=str(tmp_path), seconds=1.0, accuracy=0.9, examples=1), evaluation_suite
            )

    with pytest.raises(ValueError, match=r"no table for \['evaluation'\]"):
        workflow()


def test_one_run_per_directory_and_names_are_names(tmp_path):
    first = Run("demo", "DEMO", "same", str(tmp_path), ThresholdsConfig(), False, None)
    with pytest.raises(RunBusy, match=rf"same is in use by pid {os.getpid()} on "):
        Run("demo", "DEMO", "same", str(tmp_path), ThresholdsConfig(), False, None)
    first.close()
    with Run("demo", "DEMO", "same", str(tmp_path), ThresholdsConfig(), False, None) as again:  # released: free again
        assert Path(again.dir) == tmp_path / "same"
    for bad in ("../escape", "a/b", ".hidden", "..", ""):
        with pytest.raises(ValueError, match="is not a name"):
            Run("demo", "DEMO", bad or "x/", str(tmp_path), ThresholdsConfig(), False, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]  # nothing written outside runs_root


def test_a_flow_run_name_typed_in_the_ui_becomes_a_directory_name():
    assert _as_name("lavender-woodpecker") == "lavender-woodpecker"
    assert _as_name("my run #2 / retry") == "my-run-2-retry"
    assert _as_name("../..") is None and _as_name(None) is None


def test_the_run_summary_artifact_shows_per_round_numbers_and_every_gates_tier():
    from tasks.shared.summary import summary_markdown

    md = summary_markdown(
        "/runs/srf-1",
        {
            "workflow": "srf",
            "tier": "HIGH",
            "verdict": "within noise",
            "rl_kl": [0.0208, 0.031],
            "reward_verifier_spearman": [None],
            "shards": [],
            "train_jsonl": ["a.jsonl"],
            "gate_tiers": {"1-sft-preparation": "HIGH", "5-rl-fine-tuning": "MEDIUM"},
            "results": {"kl": 0.02},
        },
    )
    assert "| rl\\_kl | 0.0208, 0.031 |" in md and "| reward\\_verifier\\_spearman | not computed |" in md
    assert "| 5-rl-fine-tuning | MEDIUM |" in md and "| 1-sft-preparation | HIGH |" in md
    assert "shards" not in md and "a.jsonl" not in md  # empty lists and lists of paths are not table rows


def test_the_run_summary_embeds_its_plots_and_links_each_stage_to_its_gate_report(tmp_path):
    import base64

    from tasks.shared.summary import summary_markdown

    png = tmp_path / "training_curves.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake image bytes")
    md = summary_markdown(
        str(tmp_path / "run"),
        {
            "workflow": "dpo",
            "tier": "HIGH",
            "accuracy": 0.8268333333333334,
            "gate_tiers": {"1-sft-preparation": "HIGH", "2-preference-data": "MEDIUM"},
            "gate_reports": {"1-sft-preparation": "0f0e", "2-preference-data": None},
            "stage_seconds": {"1-sft-preparation": 12.345, "2-preference-data": 3.0},
            "plots": [str(png), str(tmp_path / "gone.png")],
        },
    )
    assert f"![training_curves](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})" in md
    assert "(plot gone.png could not be read" in md  # said, not silently dropped
    assert "| 1-sft-preparation | HIGH | 12.3 | [gate report](/artifacts/artifact/0f0e) |" in md
    assert "| 2-preference-data | MEDIUM | 3 |  |" in md
    assert "| accuracy | 0.8268 |" in md  # rounded for a person; summary.json keeps every digit


def test_the_run_directory_keeps_the_resolved_recipe_and_what_produced_it(tmp_path):
    import json

    from realign.recipes.dpo import DPOWorkflowConfig

    first = DPOWorkflowConfig(run_name="rec", runs_root=str(tmp_path))
    with Run("demo", "DEMO", "rec", str(tmp_path), ThresholdsConfig(), False, None, recipe=first):
        pass
    run = tmp_path / "rec"
    saved = json.loads((run / "recipe.json").read_text())
    assert saved == first.model_dump(mode="json") and saved["dpo"]["train"]["steps"] == 120  # defaults filled in
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["versions"]["mlx-lm"] and prov["versions"]["realign"] and prov["python"]
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    # a retry with the same recipe keeps one file; another recipe keeps the earlier one beside it
    with Run("demo", "DEMO", "rec", str(tmp_path), ThresholdsConfig(), False, None, recipe=first):
        pass
    assert sorted(p.name for p in run.glob("recipe*.json")) == ["recipe.json"]
    changed = first.model_copy(update={"control": False})
    with Run("demo", "DEMO", "rec", str(tmp_path), ThresholdsConfig(), False, None, recipe=changed):
        pass
    names = sorted(p.name for p in run.glob("recipe*.json"))
    assert len(names) == 2 and json.loads((run / "recipe.json").read_text())["control"] is False
    earlier = next(p for p in run.glob("recipe.*.json"))
    assert json.loads(earlier.read_text())["control"] is True
    with Run("demo", "DEMO", "rec", str(tmp_path), ThresholdsConfig(), False, None, recipe=first):  # within a second
        pass
    assert len(list(run.glob("recipe*.json"))) == 3  # nothing overwritten
