"""`realign run dpo` as a user runs it: names checked before anything starts, and only this run's summary printed."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli


def test_a_run_name_that_is_a_path_is_refused_before_anything_starts(tmp_path):
    proc = run_cli("run", "dpo", "--run-name", "../../escape", "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "a run name is letters, digits" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_the_srf_workflow_runs_from_the_cli_with_the_same_checks(tmp_path):
    proc = run_cli("run", "srf", "--run-name", "../../escape", "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "a run name is letters, digits" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("config:\n  rl:\n    reward_model_weight: 0\n    verifier_weight: 0\n")
    proc = run_cli("run", "srf", "--config", str(bad), "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "nothing to reward" in proc.stderr and "bad.yaml" in proc.stderr
    proc = run_cli("demo", "rlhf")
    assert proc.returncode == 2 and "no demo for 'rlhf': choose one of dpo, srf" in proc.stderr


@pytest.mark.slow
def test_a_failed_run_never_prints_a_previous_runs_summary(tmp_path):
    # A quick run that fails at gate 1 (no SFT, a perplexity bound nothing meets), in a directory where an
    # earlier run left a HIGH summary.
    recipe = tmp_path / "fail.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "sft": {"enabled": False},
                "data": {"n_eval": 10, "n_dev": 10, "n_prompts": 10, "n_prompts_benchmark": 0},
                "thresholds": {"sft": {"max_perplexity": 1.0001}},
            }
        )
    )
    old = {"workflow": "dpo", "tier": "HIGH", "flow_run_id": "an-earlier-run", "results": {}, "verdict": "old"}
    (tmp_path / "runs" / "again").mkdir(parents=True)
    (tmp_path / "runs" / "again" / "summary.json").write_text(json.dumps(old))
    proc = run_cli("run", "dpo", "--config", str(recipe), "--run-name", "again", "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "run failed" in proc.stderr and "perplexity" in proc.stderr
    assert "dpo run: HIGH" not in proc.stdout and "old" not in proc.stdout.split()
    assert json.loads((tmp_path / "runs" / "again" / "summary.json").read_text()) == old  # not clobbered either


def test_summary_values_read_as_a_person_reads_them():
    from realign.cli.main import _shown

    assert _shown(float("nan")) == "not computed" and _shown(None) == "not computed"
    assert _shown(0.123456) == "0.1235" and _shown([0.5, None, float("nan")]) == "0.5, not computed, not computed"
