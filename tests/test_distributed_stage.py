"""A recipe's `distributed:` section makes the training stages launch themselves on ranks (mlx.launch, 2 local ranks
on the ring backend), and what they leave is what the single-process stage leaves.

Stage 1 (SFT; the abliteration flow's behaviour model), the DPO workflow's stage 5, the SRF reward model (stage 3) and
the anti-hallucination stages 3 and 5 each run twice under prefect_test_harness, in two run directories whose
RUN_DIR/recipe.json (as the flow's Run writes it) differs only in
`distributed`: the distributed run must have launched 2 ranks (its job files and per-rank step rows), return a result
of the same form, write the same output files, and end at the single-process weights up to float rounding (`close`:
99.9% within 1e-5, mean 1e-6, none beyond lr per step; tests/test_distributed.py's docstring says why). The SRF and
RLVR stage 5 (on-policy RL: the ranks sample other completions than one process) are checked in form: launched on 2
ranks, identical weights on both, evaluations here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TWO_RANKS = {"hosts": ["127.0.0.1"], "ranks_per_host": 2, "backend": "ring"}
TRAIN = {"steps": 4, "batch_size": 8, "learning_rate": 1e-3, "lora": None, "max_seq_len": 128, "checkpoint_every": 0}
DATA = {
    "n_prompts": 40,
    "n_prompts_benchmark": 10,
    "n_sft_target": 48,
    "n_sft_benchmark": 16,
    "n_eval": 10,
    "n_dev": 10,
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def recipe(model_dir: Path, distributed: dict | None):
    from realign.recipes.dpo import DPOWorkflowConfig

    return DPOWorkflowConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "data": DATA,
            "sft": {"train": {**TRAIN, "metrics_every": 1000}},
            "dpo": {"train": {**TRAIN, "metrics_every": 2}, "loss": {"beta": 0.1}, "val_fraction": 0.25},
            "distributed": distributed,
        }
    )


def run_dir(root: Path, c) -> str:
    """A run directory holding the resolved recipe, as flows.run.Run leaves it before the first stage."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.json").write_text(json.dumps(c.model_dump(mode="json")))
    return str(root)


def weights(model_dir) -> dict[str, np.ndarray]:
    import mlx.core as mx

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update({k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(f)).items()})
    return out


def files(d) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())


def close(one_dir, two_dir, start_dir, lr: float = TRAIN["learning_rate"], steps: int = TRAIN["steps"]) -> None:
    """The distributed weights are the single-process ones up to float rounding: nearly every weight within 1e-5 and
    on average within 1e-6. A few may be further apart, but never more than lr per step: AdamW divides each gradient
    by its running RMS, so where a gradient is ~0 its last bits (summation order) decide the sign of a step of up to
    lr (measured max 1e-5 to 1.5e-4 from run to run, 99.9th percentile ~1e-7, mean ~2e-8)."""
    a, b, start = weights(one_dir), weights(two_dir), weights(start_dir)
    assert a.keys() == b.keys()
    diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
    p999 = float(np.quantile(diffs, 0.999))
    print(f"max |diff| {diffs.max():.3g}, 99.9th percentile {p999:.3g}, mean {diffs.mean():.3g}")
    assert diffs.mean() <= 1e-6, diffs.mean()
    assert p999 <= 1e-5, p999
    assert diffs.max() <= lr * steps, diffs.max()
    moved = np.concatenate([np.abs(a[k] - start[k]).ravel() for k in a if k in start])  # a reward head: new
    assert moved.max() > 100 * p999  # training moved the weights by far more than the ranks' difference


def launched_two_ranks(job_dir: Path) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    assert Path(job["data"]).is_file() and job["out_dir"] == str(job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["ranks"] == 2 and result["rank_divergence"] == 0.0
    assert all(r["ranks"] == 2 and "wait_s/rank1" in r for r in result["history"])
    assert (job_dir / "trainable.safetensors").is_file()


def test_sft_stage_on_two_ranks_matches_one_process(tmp_path, tiny_model_dir):
    from tasks.shared.sft_preparation import prepare_sft

    @flow
    def stage_one(c, run_dir: str):
        return prepare_sft(c.model, c.data, c.sft, run_dir, 4)

    single, dist = recipe(tiny_model_dir, None), recipe(tiny_model_dir, TWO_RANKS)
    assert single.distributed is None and dist.distributed.world_size() == 2
    one = stage_one(single, run_dir(tmp_path / "one", single))
    two = stage_one(dist, run_dir(tmp_path / "two", dist))

    launched_two_ranks(Path(two.out_dir) / "sft")
    assert not (Path(one.out_dir) / "sft" / "job.json").exists()  # the single-process run trained here
    assert type(one) is type(two) and one.sft_steps == two.sft_steps == TRAIN["steps"]
    assert one.sft_examples == two.sft_examples and one.benchmarks == two.benchmarks
    assert one.baseline.keys() == two.baseline.keys()
    assert files(one.model_dir) == files(two.model_dir)
    close(one.model_dir, two.model_dir, tiny_model_dir)


@pytest.fixture(scope="module")
def pairs_files(tmp_path_factory, tiny_model_dir):
    """Stage 2's pairs and stage 3's reference log-probs, as those stages write them (40 pairs)."""
    from realign.data.datasets import DataConfig, load_data
    from realign.model.load import load_model
    from realign.model.logprobs import reference_logps

    root = tmp_path_factory.mktemp("pairs")
    sft = load_data(DataConfig(**DATA)).sft[:40]
    pairs = [{"prompt": p, "chosen": c, "rejected": sft[(i + 7) % len(sft)][1]} for i, (p, c) in enumerate(sft)]
    pd.DataFrame(pairs).to_parquet(root / "pairs.parquet")
    lm = load_model(tiny_model_dir)
    pd.DataFrame(reference_logps(lm.model, lm.tokenizer, pairs, batch_size=32)).to_parquet(root / "ref.parquet")
    return str(root / "pairs.parquet"), str(root / "ref.parquet")


def test_dpo_stage_on_two_ranks_matches_one_process(tmp_path, tiny_model_dir, pairs_files):
    from tasks.dpo.dpo_optimization import optimize_dpo

    @flow
    def stage_five(c, run_dir: str):
        return optimize_dpo(c.dpo, str(tiny_model_dir), *pairs_files, run_dir)

    single, dist = recipe(tiny_model_dir, None), recipe(tiny_model_dir, TWO_RANKS)
    one = stage_five(single, run_dir(tmp_path / "one", single))
    two = stage_five(dist, run_dir(tmp_path / "two", dist))

    launched_two_ranks(Path(two.out_dir) / "distributed")
    assert not (Path(one.out_dir) / "distributed").exists()  # the single-process run trained here
    assert type(one) is type(two)
    assert (one.steps, one.stopped, one.train_pairs, one.val_pairs) == (two.steps, two.stopped, 30, 10)
    assert two.steps == TRAIN["steps"] and two.tokens == one.tokens
    for name in ("reward_accuracy", "reward_margin", "kl", "entropy"):  # the held-out check, single-process
        assert np.isfinite(getattr(two, name)), name
    np.testing.assert_allclose(two.reward_margin, one.reward_margin, rtol=1e-3, atol=1e-4)
    m1, m2 = pd.read_parquet(one.metrics_path), pd.read_parquet(two.metrics_path)
    assert set(m1.columns) <= set(m2.columns) and len(m1) == len(m2) == TRAIN["steps"]
    assert (m2["ranks"] == 2).all() and (m2["round"] == 1).all()
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-4)
    for f in ("metrics.parquet", "held_out.json"):
        assert (Path(two.out_dir) / f).is_file()
    assert files(one.model_dir) == files(two.model_dir)
    close(one.model_dir, two.model_dir, tiny_model_dir)


def test_rlvr_stage_trains_on_two_ranks(tmp_path, tiny_model_dir):
    """The RLVR workflow's stage 5 with `distributed:` set: GRPO launched on 2 ranks, each sampling and verifying its
    share of every step's tasks; the stage reads rank 0's weights back and evaluates them here, as after one
    process. (The sampled completions differ from one process's, so the result is compared in form, not value;
    tests/test_distributed.py checks the RL gradient of the same samples against one process.)"""
    from realign.data.datasets import DataConfig, load_data
    from realign.recipes.rlvr import RLVRWorkflowConfig
    from tasks.rlvr.rlvr_optimization import optimize_rlvr

    rl = {"num_generations": 4, "max_completion_length": 6, "train": {**TRAIN, "batch_size": 4, "steps": 3}}
    c = RLVRWorkflowConfig.model_validate(
        {
            "model": {"path": str(tiny_model_dir)},
            "data": DATA,
            "verifier": {"kind": "regex"},
            "rl": {"rl": rl, "probe_prompts": 8},
            "distributed": {**TWO_RANKS, "shares": [3.0, 1.0]},
        }
    )
    bundle = load_data(DataConfig(**DATA))
    tasks = tmp_path / "tasks.jsonl"
    # a pattern about half the untrained model's samples match: its rewards vary, so GRPO has something to learn
    rows = [
        {"prompt": p, "solution": "(?s)[a-m].*", "category": "all", "tests": None, "verifiable": True}
        for p in bundle.prompts[:12]
    ]
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))

    @flow
    def stage_five(c, run_dir: str):
        return optimize_rlvr(c.rl, c.verifier, str(tasks), str(tiny_model_dir), c.data, run_dir, max_tokens=6)

    two = stage_five(c, run_dir(tmp_path / "two", c))
    job_dir = Path(two.out_dir) / "distributed"
    launched_two_ranks(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    assert job["kind"] == "rlvr" and job["shares"] == [3.0, 1.0] and job["verifier"] == "regex"
    assert two.steps == 3 and two.stopped == "completed" and two.samples == 3 * 4 * 4  # steps x tasks x G
    m = pd.read_parquet(two.metrics_path)
    assert len(m) == 3 and (m["ranks"] == 2).all() and (m["samples"] == 16).all()
    assert (m["reward_std"] > 0).all() and (m["reward"] > 0).all()  # the ranks' verifiers rewarded their samples
    for name in ("kl", "entropy", "verified_before", "verified_after"):  # evaluated here, single-process
        assert np.isfinite(getattr(two, name)), name
    trained, start = weights(two.model_dir), weights(tiny_model_dir)
    assert max(np.abs(trained[k] - start[k]).max() for k in start) > 0  # rank 0's trained weights came back
    from realign.model.load import load_model

    assert load_model(two.model_dir).tokenizer is not None  # the trained policy, saved as a model directory


def test_srf_stage_trains_on_two_ranks_with_the_reward_model(tmp_path, tiny_model_dir):
    """The SRF workflow's stage 5 with `distributed:` set: every rank loads the reward model and rewards the groups it
    samples (plus the graded verifier, by weight); rank 0's weights come back and the drift is measured here."""
    from realign.model.load import load_model
    from realign.recipes.srf import SRFWorkflowConfig
    from realign.score.reward_model import save_reward_model, sequence_reward_model
    from tasks.srf.rl_fine_tuning import optimize_rl

    # an untrained head on the tiny model: its rewards differ between samples, so the policy gets a gradient
    rm_dir = save_reward_model(sequence_reward_model(load_model(tiny_model_dir).model, seed=1), tiny_model_dir,
                               tmp_path / "rm", chat=True, max_len=128)  # fmt: skip
    rl = {"num_generations": 4, "max_completion_length": 6, "train": {**TRAIN, "batch_size": 4, "steps": 3}}
    c = SRFWorkflowConfig.model_validate(
        {
            "model": {"path": str(tiny_model_dir)},
            "data": DATA,
            "rl": {"rl": rl, "probe_prompts": 8, "reward_model_weight": 1.0, "verifier_weight": 0.5},
            "distributed": TWO_RANKS,
        }
    )

    @flow
    def stage_five(c, run_dir: str):
        return optimize_rl(c.rl, str(tiny_model_dir), str(rm_dir), c.data, run_dir)

    two = stage_five(c, run_dir(tmp_path / "two", c))
    job_dir = Path(two.out_dir) / "distributed"
    launched_two_ranks(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    assert job["kind"] == "srf" and job["reward_model"] == str(rm_dir) and job["verifier_weight"] == 0.5
    m = pd.read_parquet(two.metrics_path)
    assert len(m) == 3 and (m["ranks"] == 2).all() and (m["samples"] == 16).all()
    assert (m["reward_std"] > 0).all()  # the reward model's scores vary between samples
    close_enough = weights(two.model_dir)
    start = weights(tiny_model_dir)
    assert max(np.abs(close_enough[k] - start[k]).max() for k in start) > 0  # rank 0's trained weights came back
    assert np.isfinite(two.kl) and np.isfinite(two.entropy)


def test_reward_model_stage_on_two_ranks_matches_one_process(tmp_path, tiny_model_dir, pairs_files):
    """The SRF workflow's stage 3 with `distributed:` set: the Bradley-Terry reward model trains on the ranks (each
    its share of every batch of pairs); rank 0's head and backbone come back, are saved and measured here."""
    from realign.recipes.srf import SRFWorkflowConfig
    from tasks.srf.reward_model_training import train_reward_model

    def srf(distributed):
        return SRFWorkflowConfig.model_validate(
            {
                "model": {"path": str(tiny_model_dir)},
                "data": DATA,
                # the reward model's default learning rate (1e-4): AdamW's near-zero-gradient steps scale with it
                "reward_model": {"training": {"train": {**TRAIN, "learning_rate": 1e-4}}, "val_fraction": 0.25},
                "distributed": distributed,
            }
        )

    @flow
    def stage_three(c, run_dir: str):
        return train_reward_model(c.reward_model, str(tiny_model_dir), pairs_files[0], run_dir)

    single, dist = srf(None), srf(TWO_RANKS)
    one = stage_three(single, run_dir(tmp_path / "one", single))
    two = stage_three(dist, run_dir(tmp_path / "two", dist))

    job_dir = Path(two.out_dir) / "distributed"
    launched_two_ranks(job_dir)
    assert json.loads((job_dir / "job.json").read_text())["kind"] == "reward"
    assert not (Path(one.out_dir) / "distributed").exists()  # the single-process run trained here
    assert (one.steps, one.n_train, one.n_val) == (two.steps, two.n_train, two.n_val) == (TRAIN["steps"], 30, 10)
    m1, m2 = pd.read_parquet(one.metrics_path), pd.read_parquet(two.metrics_path)
    assert len(m1) == len(m2) == TRAIN["steps"] and (m2["ranks"] == 2).all()
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-4)
    np.testing.assert_allclose(two.train_loss, one.train_loss, rtol=1e-3)  # the saved reward model, scored here
    assert files(one.reward_model_dir) == files(two.reward_model_dir)
    close(one.reward_model_dir, two.reward_model_dir, tiny_model_dir, lr=1e-4)


def test_abliteration_behaviour_model_on_two_ranks_matches_one_process(tmp_path, tiny_model_dir):
    """The abliteration flow's stage 1 (SFT of the behaviour into the model) with `distributed:` set."""
    from realign.recipes.abliterate import AbliterationWorkflowConfig
    from tasks.abliterate.behaviour_model import prepare_behaviour_model

    def abliteration(distributed):
        return AbliterationWorkflowConfig.model_validate(
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"skills": ["count"], "n_sft": 60, "n_direction": 8, "n_eval": 10},
                "sft": {"train": {**TRAIN, "metrics_every": 1000}},
                "distributed": distributed,
            }
        )

    @flow
    def stage_one(c, run_dir: str):
        return prepare_behaviour_model(c.model, c.data, c.sft, run_dir, [], {}, 4)

    single, dist = abliteration(None), abliteration(TWO_RANKS)
    one = stage_one(single, run_dir(tmp_path / "one", single))
    two = stage_one(dist, run_dir(tmp_path / "two", dist))

    launched_two_ranks(Path(two.out_dir) / "sft")
    assert not (Path(one.out_dir) / "sft" / "job.json").exists()  # the single-process run trained here
    assert one.sft_steps == two.sft_steps == TRAIN["steps"] and one.baseline.keys() == two.baseline.keys()
    assert files(one.model_dir) == files(two.model_dir)
    close(one.model_dir, two.model_dir, tiny_model_dir)


def test_antihallucination_training_stages_on_two_ranks_match_one_process(tmp_path, tiny_model_dir):
    """The anti-hallucination workflow's own training stages with `distributed:` set: stage 3's citation SFT and stage
    5's grounding DPO train on 2 ranks and end at the single-process weights (tolerance as above)."""
    from realign.data.datasets import load_data
    from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig
    from tasks.antihallucination.citation_training import train_citations
    from tasks.antihallucination.grounding_optimization import optimize_grounding

    def recipe_ah(distributed):
        return AntiHallucinationWorkflowConfig.model_validate(
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"n_people": 40, "n_prompts": 40, "n_sft_target": 40, "n_sft_benchmark": 16,
                         "n_prompts_benchmark": 10, "n_eval": 10, "n_dev": 10},
                "citation": {"train": {**TRAIN, "metrics_every": 1000}},
                "optimization": {"train": {**TRAIN, "metrics_every": 2}, "val_fraction": 0.25},
                "distributed": distributed,
            }
        )  # fmt: skip

    single, dist = recipe_ah(None), recipe_ah(TWO_RANKS)
    bundle = load_data(single.data)
    sft, pairs = tmp_path / "cited.jsonl", tmp_path / "pairs.jsonl"
    sft.write_text("".join(json.dumps({"instruction": p, "output": c}) + "\n" for p, c in bundle.sft[:32]))
    sft_rows = bundle.sft[:32]
    rows = [{"prompt": p, "chosen": c, "rejected": sft_rows[(i + 7) % 32][1]} for i, (p, c) in enumerate(sft_rows)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))

    @flow
    def stages(c, run_dir: str):
        cited = train_citations(c.citation, c.data, str(sft), str(tiny_model_dir), run_dir, max_tokens=6)
        grounded = optimize_grounding(c.optimization, c.data, str(pairs), str(tiny_model_dir), run_dir, max_tokens=6)
        return cited, grounded

    one = stages(single, run_dir(tmp_path / "one", single))
    two = stages(dist, run_dir(tmp_path / "two", dist))
    for a, b in zip(one, two):
        launched_two_ranks(Path(b.out_dir) / "distributed")
        assert not (Path(a.out_dir) / "distributed").exists()  # the single-process run trained here
        assert type(a) is type(b) and a.steps == b.steps == TRAIN["steps"]
        close(a.model_dir, b.model_dir, tiny_model_dir)
