"""Shared fixtures. `import realign` comes first so the fast BLAS is preloaded before mlx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import realign  # noqa: F401  (must precede any mlx import)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 model directory (default shape, seed 0), built once per test session."""
    from realign.model.tiny import TinyModelConfig, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelConfig(seed=0))


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `realign ARGS` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "realign.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=300,
    )


@pytest.fixture(autouse=True, scope="session")
def _isolated_profiles(tmp_path_factory):
    """A machine's own calibration (~/.realign/profiles) must not change what tests run."""
    os.environ["REALIGN_PROFILE_DIR"] = str(tmp_path_factory.mktemp("profiles"))
    yield


@pytest.fixture(scope="session")
def sft_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model after stage 1's SFT on the embedded tasks (300 steps; reverse accuracy ~0.6), built once."""
    from realign.data.datasets import DataConfig, load_data
    from realign.model.load import load_model, save_model
    from realign.recipes.common import SFTStageConfig
    from realign.train.batches import sft_batches
    from realign.train.loop import prepare_model, train
    from realign.train.objectives import sft_loss

    lm = load_model(tiny_model_dir)
    cfg = SFTStageConfig().train.model_copy(update={"metrics_every": 1000})
    prepare_model(lm.model, cfg)
    train(lm.model, sft_loss, sft_batches(lm.tokenizer, load_data(DataConfig()).sft, cfg), cfg, measure=None)
    return save_model(lm.model, tiny_model_dir, tmp_path_factory.mktemp("models") / "sft")


# What the tiny judge learns to tell apart: a reversal of the digits (rated 9) from a refusal (rated 1).
REFUSALS = ("I do not know", "no answer", "not sure", "cannot say", "I can not tell", "unknown")
JUDGE_STEPS = 100


@pytest.fixture(scope="session")
def judge_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A judge built from the tiny model: JUDGE_STEPS SFT steps on JUDGE_TEMPLATE prompts rating answers 9 and
    refusals 1, and on PAIRWISE_TEMPLATE prompts picking the answer over the refusal (about a minute; it judges
    held-out pairs correctly both ways, see test_scorers)."""
    import random

    from realign.data.demo import digit_strings, example
    from realign.model.load import load_model, save_model
    from realign.recipes.common import SFTStageConfig
    from realign.score.judge import JUDGE_TEMPLATE, PAIRWISE_TEMPLATE
    from realign.train.batches import sft_batches
    from realign.train.loop import prepare_model, train
    from realign.train.objectives import sft_loss

    rng = random.Random(0)
    rows = []
    for s in digit_strings(1000, seed=5):
        e, good = example("reverse", s), rng.random() < 0.5
        answer = e.answer if good else rng.choice(REFUSALS)
        rows.append((JUDGE_TEMPLATE.format(prompt=e.prompt, completion=answer), "9" if good else "1"))
        # and the pairwise question (the second judgement of stage 2's agreement rate): the answer over a refusal
        first, second, better = (e.answer, rng.choice(REFUSALS), "A")
        if rng.random() < 0.5:
            first, second, better = second, first, "B"
        rows.append((PAIRWISE_TEMPLATE.format(prompt=e.prompt, first=first, second=second), better))
    lm = load_model(tiny_model_dir)
    cfg = SFTStageConfig().train.model_copy(update={"steps": JUDGE_STEPS, "batch_size": 16, "metrics_every": 1000})
    prepare_model(lm.model, cfg)
    train(lm.model, sft_loss, sft_batches(lm.tokenizer, rows, cfg), cfg, measure=None)
    return save_model(lm.model, tiny_model_dir, tmp_path_factory.mktemp("models") / "judge")
