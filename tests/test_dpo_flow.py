"""The DPO workflow under prefect_test_harness: all seven stages, outputs, and cached stages on a rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from conftest import run_cli
from flows.dpo import dpo
from gates.gate import GateFailed
from realign.recipes.dpo import DPOWorkflowConfig

# Small and fast; thresholds relaxed so the test exercises the plumbing, not the tiny model's luck.
# (The real thresholds are exercised by the gate tests and by `make demo`.)
SMALL = {
    "data": {
        "n_prompts": 120,
        "n_prompts_benchmark": 60,
        "n_sft_target": 600,
        "n_sft_benchmark": 1200,
        "n_eval": 40,
        "n_dev": 20,
    },
    "sft": {
        "train": {
            "steps": 250,
            "batch_size": 32,
            "learning_rate": 3e-4,
            "warmup_steps": 5,
            "lora": None,
            "metrics_every": 50,
        }
    },
    "pairs": {"generation": {"n": 3, "batch_size": 64, "max_tokens": 10}},
    "reward_model": {"steps": 50},
    "dpo": {"train": {"steps": 6, "batch_size": 8, "learning_rate": 5e-5, "checkpoint_every": 3, "metrics_every": 3}},
    "iterations": {"max_rounds": 2, "epsilon": -1.0},
    "thresholds": {
        "preference": {"min_pairs": 10, "min_preference_gap": 0.15},
        "sft": {"max_perplexity": 1000},
        "tiers": {"agreement_rate": {"direction": "higher", "high": 0.0, "medium": 0.0}},
        "reward_model": {"min_accuracy": 0.0},
        "optimization": {"max_kl": 100.0, "min_reward_margin": -100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def config(tmp_path: Path, name: str, **overrides) -> DPOWorkflowConfig:
    data = json.loads(json.dumps(SMALL))
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return DPOWorkflowConfig.model_validate({**data, "run_name": name, "runs_root": str(tmp_path)})


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


@pytest.mark.slow
def test_all_seven_stages_run_and_write_their_outputs(tmp_path, monkeypatch, tiny_model_dir):
    from hardware.calibrate import model_key_of
    from hardware.profiles import save_calibration

    monkeypatch.setenv("REALIGN_PROFILE_DIR", str(tmp_path / "profiles"))
    # as `realign calibrate --model` would leave it, measured on a model of the run's shape (the run builds its own)
    save_calibration({"chosen_batch": 48, "profile": "generic", "model_key": model_key_of(tiny_model_dir).as_dict()})
    state = dpo(config(tmp_path, "full"), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    run = tmp_path / "full"
    for d in (
        "01_sft_preparation",
        "02_preference_data",
        "03_model_initialization",
        "04_preference_modeling",
        "05_dpo_optimization",
        "06_iterative_training",
        "07_evaluation",
    ):
        assert (run / d).is_dir(), d
        assert list((run / d).glob("gate_*.json")), f"no gate report in {d}"
    assert summary["rounds"] == 2 and (run / "02_preference_data_round2" / "pairs.parquet").exists()
    assert summary["gate_tiers"]["1-sft-preparation"] in ("HIGH", "MEDIUM")
    assert set(summary["gate_tiers"]) >= {
        "1-sft-preparation",
        "2-preference-data",
        "2-preference-data-round2",
        "5-dpo-optimization-round2",
        "6-iterative-training",
        "7-evaluation",
    }
    assert summary["generation_batch_size"] == 48 and summary["batch_size_source"].startswith("calibrated")
    assert summary["compute_time_s"] > 0
    assert summary["throughput_examples_per_s"] == pytest.approx(
        summary["examples_processed"] / summary["compute_time_s"], rel=0.01
    )
    for key in (
        "data_type",
        "workflow",
        "tier",
        "examples_processed",
        "machine",
        "generation_batch_size",
        "wall_time_s",
        "throughput_examples_per_s",
        "cost_per_example",
        "run_dir",
        "final_model",
    ):
        assert key in summary, key
    assert summary["cost_per_example"] is None and "not configured" in summary["cost_note"]
    assert summary["examples_processed"] == 2 * (120 + 60) * 3  # rounds x prompts x samples
    results = summary["results"]
    for key in (
        "before/reverse_accuracy",
        "after/reverse_accuracy",
        "control/reverse_accuracy",
        "capability_retention",
        "kl",
        "decontamination",
        "win_rate",
    ):
        assert key in results, key
    # stage 3 cached the reference's hidden states at the completion tokens; stage 5 measured its per-step KL from
    # them (tests/test_train.py checks that KL against the reference's forward pass)
    import pandas as pd

    cache = pd.read_parquet(run / "03_model_initialization" / "reference_logps.parquet")
    assert {"chosen_ref_hidden", "rejected_ref_hidden"} <= set(cache.columns) and len(cache["chosen_ref_hidden"][0])
    history = pd.read_parquet(run / "05_dpo_optimization" / "metrics.parquet")
    assert history["kl"].notna().any() and (history["kl"].dropna() >= 0).all()
    # before-vs-after and after-vs-control, each with its paired-bootstrap interval around the difference
    compared = {(c["first"], c["second"]): c for c in summary["comparisons"]}
    # and the win rate against an even split, with its interval
    assert set(compared) == {("after", "before"), ("after", "control"), ("after", "even")}
    assert compared[("after", "even")]["first_value"] == pytest.approx(results["win_rate"])
    for c in compared.values():
        assert c["ci_low"] <= c["difference"] <= c["ci_high"] and c["items"] == 40
        assert c["within_noise"] == (c["ci_low"] <= 0 <= c["ci_high"])
    assert compared[("after", "before")]["second_value"] == pytest.approx(results["before/reverse_accuracy"])
    assert compared[("after", "control")]["second_value"] == pytest.approx(results["control/reverse_accuracy"])
    assert json.loads((run / "summary.json").read_text())["tier"] == summary["tier"]
    for png in ("training_curves.png", "before_after.png"):
        assert (run / "07_evaluation" / png).stat().st_size > 1000
    assert (run / "07_evaluation" / "final_model" / "model.safetensors").exists()
    assert (run / "01_sft_preparation" / "baseline_metrics.json").exists()
    # the outputs are data files realign (and TRL / mlx-lm) read
    assert run_cli("validate", str(run / "02_preference_data" / "train.jsonl"), "--format", "dpo").returncode == 0
    assert (
        run_cli("validate", str(run / "02_preference_data" / "completions.jsonl"), "--format", "grpo").returncode == 0
    )
    import mlx_lm

    mlx_lm.load(str(run / "07_evaluation" / "final_model"))
    check_every_file_the_run_wrote(run)


def check_every_file_the_run_wrote(run):
    """`realign gate check` on each file of the run: a verdict (with the run's own thresholds), or an error that
    names the file to check instead; never a REJECT that only means 'wrong file'."""
    from gates.cli import GateInputError, check_file, run_thresholds

    th, _ = run_thresholds(run / "02_preference_data" / "pairs.parquet")
    assert th.preference.min_pairs == SMALL["thresholds"]["preference"]["min_pairs"]
    checked, pointed = [], []
    for path in sorted(p for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            report = check_file(None, path, th)
        except GateInputError as exc:
            assert "gate check" in str(exc) or "check instead" in str(exc), (path, str(exc))
            pointed.append(path.relative_to(run))
            continue
        assert report.tier != "REJECT", (path, report.failure_message())
        checked.append(str(path.relative_to(run)))
    for name in (
        "01_sft_preparation/baseline_metrics.json",
        "02_preference_data/pairs.parquet",
        "02_preference_data/stats.json",
        "03_model_initialization/reference.json",
        "04_preference_modeling/reward_model.json",
        "05_dpo_optimization/held_out.json",
        "06_iterative_training/rounds.json",
        "07_evaluation/evaluation.json",
        "07_evaluation/gate_7-evaluation.json",
    ):
        assert name in checked, (name, checked)
    with pytest.raises(GateInputError, match=r"reads chosen_score.*check instead: .*pairs.parquet"):
        check_file("preference_pairs", run / "02_preference_data" / "train.jsonl", th)


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_users_own_files_with_pairs_in_trl_conversational_format_scored_by_a_tiny_judge(tmp_path, judge_model_dir):
    from conftest import REFUSALS
    from realign.data.datasets import DataConfig, load_data

    # What a user brings: SFT rows and evaluation sets as files, and preference pairs in TRL's conversational format
    bundle = load_data(DataConfig(**SMALL["data"]))
    sft = _jsonl(
        tmp_path / "sft.jsonl",
        [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in bundle.sft],
    )
    evals = [
        {
            "name": e.name,
            "role": e.role,
            "path": _jsonl(
                tmp_path / f"{e.name}.jsonl", [{"prompt": p, "answer": a} for p, a in zip(e.prompts, e.answers)]
            ),
        }
        for e in bundle.eval_sets
    ]
    reverse = [p for p in bundle.prompts if p.startswith("Reverse")][:80]
    rows = []
    for i, p in enumerate(reverse):
        answer = bundle.answers[p]
        # every 8th rejected answer is wrong digits, which the judge (answers vs refusals) cannot tell apart
        rejected = answer[1:] + answer[0] if i % 8 == 0 else REFUSALS[i % len(REFUSALS)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    pairs_file = _jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = config(
        tmp_path,
        "own",
        data={"source": "files", "sft": sft, "pairs": pairs_file, "eval_sets": evals},
        pairs={"scorer": "judge", "judge_model": str(judge_model_dir)},
        iterations={"max_rounds": 1},
    )
    state = dpo(cfg, return_state=True)
    assert state.is_completed(), state.message
    summary, run = state.result(), tmp_path / "own"
    stats = json.loads((run / "02_preference_data" / "stats.json").read_text())
    assert stats["given"] == 80 and stats["prompts"] == 0 and stats["unscored"] == 0  # nothing sampled in round 1
    assert stats["no_gap"] >= 8  # at least the wrong-digit rejects
    assert stats["pairs"] == 80 - stats["no_gap"] - stats["duplicates"] - stats["contaminated"]
    # the judge ranked as labelled exactly the pairs it kept (its ratings are 0.9 or 0.1, the minimum gap 0.15)
    assert stats["agreement_rate"] == pytest.approx((80 - stats["no_gap"]) / 80)
    import pandas as pd

    kept = pd.read_parquet(run / "02_preference_data" / "pairs.parquet")
    labelled = {r["prompt"][0]["content"]: r["chosen"][0]["content"] for r in rows}
    assert all(labelled[p] == c for p, c in zip(kept["prompt"], kept["chosen"])) and (kept["gap"] > 0.15).all()
    assert summary["examples_processed"] == 160  # both answers of each given pair, scored by the judge
    assert summary["rounds"] == 1 and "before/reverse_accuracy" in summary["results"]
    assert run_cli("validate", str(run / "02_preference_data" / "train.jsonl"), "--format", "dpo").returncode == 0
    assert (run / "07_evaluation" / "final_model" / "model.safetensors").exists()
    card = (run / "07_evaluation" / "final_model" / "README.md").read_text()
    assert f"pairs: `{pairs_file}`" in card and "| 7-evaluation |" in card and "after/reverse\\_accuracy" in card


@pytest.mark.slow
def test_open_ended_prompts_scored_by_a_judge_report_a_win_rate_with_an_interval(tmp_path, judge_model_dir):
    import pandas as pd

    from realign.data.datasets import DataConfig, load_data
    from realign.eval.probes import outcomes

    # What a user brings: prompts without answers, an open-ended target set, a benchmark to retain, and a judge.
    bundle = load_data(DataConfig(**SMALL["data"]))
    reverse = [p for p in bundle.prompts if p.startswith("Reverse")]
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in reverse])
    target = bundle.target
    open_set = _jsonl(tmp_path / "open.jsonl", [{"prompt": p} for p in target.prompts])
    copy = bundle.benchmarks[0]
    bench = _jsonl(tmp_path / "copy.jsonl", [{"prompt": p, "answer": a} for p, a in zip(copy.prompts, copy.answers)])
    # the model to align refuses some of the time (its SFT data does, for 40% of reversals): what the judge rates low
    from conftest import REFUSALS

    rows = [
        (p, REFUSALS[i % len(REFUSALS)] if p.startswith("Reverse") and i % 5 < 2 else a)
        for i, (p, a) in enumerate(bundle.sft)
    ]
    sft = _jsonl(tmp_path / "sft.jsonl", [{"instruction": p, "output": a} for p, a in rows])
    judge = str(judge_model_dir)
    cfg = config(
        tmp_path,
        "open",
        data={
            "source": "files",
            "prompts": prompts,
            "sft": sft,
            "eval_sets": [
                {"name": "chat", "path": open_set, "role": "target", "format": "open", "judge_model": judge},
                {"name": "copy", "path": bench, "role": "benchmark"},
            ],
        },
        pairs={**SMALL["pairs"], "scorer": "judge", "judge_model": judge},
        iterations={"max_rounds": 1},
    )
    state = dpo(cfg, return_state=True)
    assert state.is_completed(), state.message
    summary, run = state.result(), tmp_path / "open"
    stats = json.loads((run / "02_preference_data" / "stats.json").read_text())
    kept = pd.read_parquet(run / "02_preference_data" / "pairs.parquet")
    # no answers, so the agreement is the judge's second, pairwise judgement of each kept pair (answers swapped)
    decided = kept["agree"].dropna()
    assert len(decided) >= 1 and stats["agreement_rate"] == pytest.approx((decided == 1).mean())
    baseline = json.loads((run / "01_sft_preparation" / "baseline_metrics.json").read_text())
    assert "chat_score" in baseline and "chat_accuracy" not in baseline  # no accuracy without answers
    assert "open-ended" in summary["evaluation"] and judge in summary["evaluation"]
    assert "copy (benchmark, 40 items): exact match" in summary["evaluation"]
    results = summary["results"]
    assert "after/chat_score" in results and "before/chat_score" in results and "after/chat_accuracy" not in results
    assert results["after/perplexity"] > 1 and results["before/perplexity"] > 1
    # The win rate and the rating difference, recomputed by hand from the answers and ratings stage 7 wrote.
    rows = [json.loads(line) for line in (run / "07_evaluation" / "target_answers.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == target.prompts and all(r["answer"] == "" for r in rows)
    nan = float("nan")
    after = [nan if r["after_score"] is None else r["after_score"] for r in rows]
    before = [nan if r["before_score"] is None else r["before_score"] for r in rows]
    wins = outcomes(after, before)
    by_metric = {(c["metric"], c["second"]): c for c in summary["comparisons"]}
    win = by_metric["chat_score_win_rate", "even"]
    assert win["first_value"] == pytest.approx(sum(wins) / len(wins)) == pytest.approx(results["win_rate"])
    assert win["items"] == len(wins) and win["ci_low"] <= win["difference"] <= win["ci_high"]
    rated = [(a, b) for a, b in zip(after, before) if a == a and b == b]
    gain = by_metric["chat_score", "before"]
    assert gain["difference"] == pytest.approx(sum(a - b for a, b in rated) / len(rated))
    assert results["target_after"] == pytest.approx(results["after/chat_score"])
    assert ("chat_score", "control") in by_metric  # the control arm is rated by the same judge
    assert "chat mean judge rating" in summary["verdict"]
    md = (run / "07_evaluation" / "final_model" / "README.md").read_text()
    assert "**Evaluation:** chat (target" in md


@pytest.mark.slow
def test_a_lora_run_keeps_adapters_per_stage_and_round_and_one_fused_model(tmp_path, sft_model_dir):
    import mlx_lm

    # A trained model of the user's own (LoRA on the random tiny base would learn nothing), LoRA in every stage.
    lora = {"rank": 4, "scale": 20.0}
    cfg = config(
        tmp_path,
        "lora",
        model={"path": str(sft_model_dir)},
        sft={"train": {**SMALL["sft"]["train"], "steps": 50, "lora": lora}},
        dpo={"train": {**SMALL["dpo"]["train"], "lora": lora}},
    )
    state = dpo(cfg, return_state=True)
    assert state.is_completed(), state.message
    run = tmp_path / "lora"
    stages = ["01_sft_preparation", "05_dpo_optimization", "05_dpo_optimization_round2"]
    for stage in stages:
        files = sorted(p.name for p in (run / stage / "model").iterdir())
        assert files == ["adapter_config.json", "adapters.safetensors"], (stage, files)
    # mlx-lm applies stage 1's adapters to the base model as they are
    adapter_cfg = json.loads((run / "01_sft_preparation" / "model" / "adapter_config.json").read_text())
    base = (run / "01_sft_preparation" / "model" / adapter_cfg["model"]).resolve()
    mlx_lm.load(str(base), adapter_path=str(run / "01_sft_preparation" / "model"))
    assert base == sft_model_dir.resolve()  # outside the run: named by its absolute path
    # full weights: the one fused model at the end, nothing per stage
    weights = sorted(str(p.relative_to(run)) for p in run.rglob("model*.safetensors"))
    assert weights == ["07_evaluation/final_model/model.safetensors"]
    model_bytes = (run / "07_evaluation" / "final_model" / "model.safetensors").stat().st_size
    # rank-4 adapters, rank x (in + out) values per projection of each of the 2 blocks (hidden 128, 2 key/value
    # heads of 32, MLP 512): q, o 4 x 256; k, v 4 x 192; gate, up, down 4 x 640 -> 11264 per block, 22528 float32
    # values = 90112 bytes plus the safetensors header, against 3 MB for the model
    for stage in stages:
        size = (run / stage / "model" / "adapters.safetensors").stat().st_size
        assert 90112 < size < 90112 + 4096 and size < model_bytes / 30, (stage, size, model_bytes)
    fused, _ = mlx_lm.load(str(run / "07_evaluation" / "final_model"))
    # Asked not to fuse (only stage 7 reruns: stages 1-6 are cached): one adapter merged from the three stages'
    import mlx.core as mx

    again = dpo(cfg.model_copy(update={"fuse_final": False}), return_state=True)
    assert again.is_completed(), again.message
    final = run / "07_evaluation" / "final_model"
    assert sorted(p.name for p in final.iterdir() if p.suffix != ".md" and p.name != "metrics.json") == [
        "adapter_config.json",
        "adapters.safetensors",
    ]
    merged = json.loads((final / "adapter_config.json").read_text())
    levels = len(merged["merged_from"])  # stage 1 and the chosen round's stage 5 (and round 1's under round 2)
    assert levels in (2, 3) and merged["merged_from"][0].endswith("01_sft_preparation/model")
    assert merged["lora_parameters"]["rank"] == 4 * levels and merged["model"] == str(sft_model_dir.resolve())
    # the stages' rank-4 adapters stacked: levels x 90112 bytes, a fraction of the model
    assert levels * 90112 < (final / "adapters.safetensors").stat().st_size < levels * 90112 + 4096
    unfused, _ = mlx_lm.load(str(sft_model_dir), adapter_path=str(final))
    tokens = mx.array([[5, 6, 7, 8, 9]])
    assert mx.abs(unfused(tokens) - fused(tokens)).max().item() < 1e-3
    assert "adapter_path=PATH_TO_THIS_DIRECTORY" in (final / "README.md").read_text()


@pytest.mark.slow
def test_retrying_a_run_rejected_at_stage_5_reuses_stages_1_to_4(tmp_path):
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    strict = config(
        tmp_path,
        "retry",
        iterations={"max_rounds": 1},
        thresholds={**SMALL["thresholds"], "optimization": {"max_kl": 1e-9, "min_reward_margin": -100.0}},
    )
    failed = dpo(strict, return_state=True)
    assert failed.is_failed()
    with pytest.raises(GateFailed, match="Gate 5-dpo-optimization: REJECT"):
        failed.result()
    run_id = failed.state_details.flow_run_id
    first = task_states(run_id)
    assert first["gate-5-dpo-optimization"] == "Failed" and not any(n.startswith("7-") for n in first)

    # Fix the cause (the threshold) and retry the same flow run, as the UI's Retry does.
    fixed = config(tmp_path, "retry", iterations={"max_rounds": 1})
    with get_client(sync_client=True) as c:
        c.update_flow_run(run_id, parameters={"config": fixed.model_dump(mode="json")})
        c.set_flow_run_state(run_id, Scheduled(), force=True)
        flow_run = c.read_flow_run(run_id)
    again = run_flow(dpo, flow_run=flow_run, parameters={"config": fixed}, return_type="state")
    assert again.is_completed(), again.message
    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    by_stage: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r.expected_start_time):
        by_stage.setdefault(re.sub(r"-[0-9a-f]{3}$", "", r.name), []).append(r.state.name)
    for stage in ("1-sft-preparation", "2-preference-data", "3-model-initialization", "4-preference-modeling"):
        assert by_stage[stage] == ["Completed", "Cached"], (
            stage,
            by_stage,
        )  # first attempt ran it, the retry reused it
    assert by_stage["gate-5-dpo-optimization"] == ["Failed", "Completed"]
    assert by_stage["7-evaluation"] == ["Completed"]
    assert json.loads((tmp_path / "retry" / "summary.json").read_text())["tier"] in ("HIGH", "MEDIUM")
