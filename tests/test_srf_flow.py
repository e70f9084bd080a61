"""The SRF workflow under prefect_test_harness: a stage-4 REJECT, retried after the fix as the UI's Retry does,
reuses stages 1-3 and then runs all seven stages to the summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from conftest import run_cli
from flows.srf import srf
from gates.gate import GateFailed
from realign.recipes.srf import SRFWorkflowConfig

# Small and fast; thresholds relaxed so the test exercises the plumbing, not the tiny model's luck
# (the real thresholds are exercised by the gate tests and by `realign demo srf`).
SMALL = {
    "data": {
        "n_prompts": 120,
        "n_prompts_benchmark": 60,
        "n_sft_target": 600,
        "n_sft_benchmark": 1200,
        "n_eval": 40,
        "n_dev": 20,
    },
    "sft": {"train": {"steps": 150, "batch_size": 32, "learning_rate": 3e-4, "lora": None, "metrics_every": 50}},
    "pairs": {"generation": {"n": 3, "batch_size": 64, "max_tokens": 10}},
    "reward_model": {"training": {"train": {"steps": 20, "batch_size": 8, "learning_rate": 1e-4, "lora": None}}},
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
        "preference": {"min_pairs": 10, "min_preference_gap": 0.15},
        "sft": {"max_perplexity": 1000},
        "tiers": {"agreement_rate": {"direction": "higher", "high": 0.0, "medium": 0.0}},
        "reward_model": {"min_accuracy": 0.0, "min_val_accuracy": 0.0, "max_train_val_gap": 1.0},
        "optimization": {"max_kl": 100.0, "min_entropy": 0.0, "max_entropy": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def config(tmp_path: Path, name: str, **thresholds) -> SRFWorkflowConfig:
    data = json.loads(json.dumps(SMALL))
    data["thresholds"]["reward_model"].update(thresholds)
    return SRFWorkflowConfig.model_validate({**data, "run_name": name, "runs_root": str(tmp_path)})


def task_runs(flow_run_id) -> dict[str, list[str]]:
    """Stage or gate name -> the states of its task runs, oldest first."""
    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r.expected_start_time):
        # stage task runs carry a random suffix (3-reward-model-training-05b), named ones (gates, baselines) do not
        out.setdefault(re.sub(r"-[0-9a-f]{3}$", "", r.name), []).append(r.state.name)
    return out


@pytest.mark.slow
def test_a_stage_4_reject_retried_after_the_fix_reuses_stages_1_to_3_and_runs_all_seven(tmp_path):
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    # No reward model of 20 steps ranks every held-out pair right: stage 4 rejects.
    strict = config(tmp_path, "srf", min_val_accuracy=1.0, max_train_val_gap=0.0)
    failed = srf(strict, return_state=True)
    assert failed.is_failed()
    with pytest.raises(GateFailed, match="Gate 4-reward-model-validation: REJECT"):
        failed.result()
    run_id = failed.state_details.flow_run_id
    first = task_runs(run_id)
    assert first["gate-4-reward-model-validation"] == ["Failed"] and "5-rl-fine-tuning" not in first

    fixed = config(tmp_path, "srf")
    with get_client(sync_client=True) as c:
        c.update_flow_run(run_id, parameters={"config": fixed.model_dump(mode="json")})
        c.set_flow_run_state(run_id, Scheduled(), force=True)
        flow_run = c.read_flow_run(run_id)
    again = run_flow(srf, flow_run=flow_run, parameters={"config": fixed}, return_type="state")
    assert again.is_completed(), again.message
    states = task_runs(run_id)
    for stage in ("1-sft-preparation", "2-preference-data", "3-reward-model-training"):
        assert states[stage] == ["Completed", "Cached"], (
            stage,
            states,
        )  # the first attempt ran it, the retry reused it
    assert states["gate-4-reward-model-validation"] == ["Failed", "Completed"]
    for stage in ("5-rl-fine-tuning", "6-iterative-training", "7-evaluation"):
        assert states[stage] == ["Completed"], (stage, states)

    summary = again.result()
    run = tmp_path / "srf"
    for d in (
        "01_sft_preparation",
        "02_preference_data",
        "03_reward_model_training",
        "04_reward_model_validation",
        "05_rl_fine_tuning",
        "06_iterative_training",
        "07_evaluation",
    ):
        assert list((run / d).glob("gate_*.json")), f"no gate report in {d}"
    assert summary["workflow"] == "srf" and summary["data_type"] == "SRF"
    assert set(summary["gate_tiers"]) == {
        "1-sft-preparation",
        "2-preference-data",
        "3-reward-model-training",
        "4-reward-model-validation",
        "5-rl-fine-tuning",
        "6-iterative-training",
        "7-evaluation",
    }
    (val_accuracy,) = summary["reward_model_val_accuracy"]  # one reward model: one value
    assert 0.0 <= val_accuracy <= 1.0
    (rho,) = summary["reward_verifier_spearman"]
    assert rho is None or -1 <= rho <= 1
    (kl,), (entropy,) = summary["rl_kl"], summary["rl_entropy"]
    assert kl >= 0 and entropy > 0
    assert summary["training_steps"] == 4 and summary["rl_num_generations"] == 4
    compared = {(c["first"], c["second"], c["metric"]) for c in summary["comparisons"]}
    assert compared == {
        ("after", "before", "reverse_accuracy"),
        ("after", "control", "reverse_accuracy"),
        ("after", "before", "reward_model_score"),
        ("after", "even", "reverse_score_win_rate"),
    }
    assert isinstance(summary["results"]["reward_hacking"], bool)
    rl = json.loads((run / "05_rl_fine_tuning" / "rl.json").read_text())
    assert rl["kl"] >= 0 and rl["entropy"] > 0 and rl["steps"] == 4
    history = json.loads((run / "05_rl_fine_tuning" / "checkpoints" / "step_000004" / "state.json").read_text())
    for key in (
        "reward",
        "reward_std",
        "kl",
        "entropy",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "frac_reward_zero_std",
    ):
        assert key in history["history"][-1], key
    for png in ("training_curves.png", "before_after.png"):  # reward, KL, entropy per step; before/after/control
        assert (run / "07_evaluation" / png).stat().st_size > 1000
    # the reward model is a directory mlx-lm loads and `realign validate` reads the pairs it learned from
    import mlx_lm

    mlx_lm.load(str(run / "03_reward_model_training" / "reward_model"))
    assert run_cli("validate", str(run / "02_preference_data" / "train.jsonl"), "--format", "dpo").returncode == 0
