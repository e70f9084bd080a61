"""A recipe's `distributed:` section makes the training stages launch themselves on ranks (mlx.launch, 2 local ranks
on the ring backend), and what they leave is what the single-process stage leaves.

Stage 1 (SFT) and the DPO workflow's stage 5 each run twice under prefect_test_harness, in two run directories whose
RUN_DIR/recipe.json (as the flow's Run writes it) differs only in `distributed`: the distributed run must have
launched 2 ranks (its job files and per-rank step rows), return a result of the same form, write the same output
files, and end at the single-process weights within the tolerance of tests/test_distributed.py (max |diff| <= 1e-4;
see its docstring for why not bit-exact).
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


def close(one_dir, two_dir, start_dir) -> None:
    a, b, start = weights(one_dir), weights(two_dir), weights(start_dir)
    assert a.keys() == b.keys()
    diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
    print(f"max |diff| {diffs.max():.3g}, mean {diffs.mean():.3g}")
    assert diffs.max() <= 1e-4, diffs.max()
    moved = np.concatenate([np.abs(a[k] - start[k]).ravel() for k in a])
    assert moved.max() > 100 * diffs.max()  # training moved the weights by far more than the ranks' difference


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
