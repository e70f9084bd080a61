"""The reward model as a model: Bradley-Terry training of a scalar head on the causal LM, its metrics with TRL's
names against hand-computed values, saving it as a directory and scoring through the loaded directory."""

from __future__ import annotations

import math
import random

import mlx.core as mx
import numpy as np
import pytest

from realign.data.demo import splits
from realign.model.load import load_model
from realign.score.reward_model import load_reward_model, reward_model_loss, save_reward_model, sequence_reward_model
from realign.train.loop import TrainConfig
from realign.train.reward import RewardTrainingConfig, fit_reward_model, pair_metrics, score_pairs


def test_pair_metrics_by_hand():
    # differences 2, -1, 0: accuracy 1/3 (a tie is wrong), margin 1/3, loss mean of log(1 + e^-d)
    m = pair_metrics([3.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["margin"] == pytest.approx(1 / 3)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log(2)) / 3
    assert m["loss"] == pytest.approx(expected, rel=1e-12)
    assert m["pairs"] == 3
    assert math.isnan(pair_metrics([], [])["accuracy"])
    assert pair_metrics([1000.0], [0.0])["loss"] == pytest.approx(0.0, abs=1e-300)  # stable, no overflow


def test_the_loss_reads_the_last_non_padding_token_and_matches_bradley_terry(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    model = sequence_reward_model(lm.model, seed=1)
    tokens = mx.array([[5, 6, 7, 0], [5, 6, 0, 0], [8, 9, 10, 11], [8, 0, 0, 0]])
    last = mx.array([2, 1, 3, 0])
    r = model(tokens, last)
    # the reward of a row is the head on the hidden state at its `last` position, whatever follows it
    padded_other = model(mx.array([[5, 6, 7, 99], [5, 6, 42, 42], [8, 9, 10, 11], [8, 7, 7, 7]]), last)
    np.testing.assert_allclose(np.array(r), np.array(padded_other), rtol=1e-5, atol=1e-6)
    loss, metrics = reward_model_loss(model, {"tokens": tokens, "last": last})
    rc, rr = np.array(r[:2], dtype=np.float64), np.array(r[2:], dtype=np.float64)
    assert loss.item() == pytest.approx(float(np.mean(np.logaddexp(0, -(rc - rr)))), rel=1e-5)
    assert metrics["accuracy"].item() == pytest.approx(float(np.mean(rc > rr)))
    assert metrics["margin"].item() == pytest.approx(float(np.mean(rc - rr)), rel=1e-5, abs=1e-6)
    # with a margin the loss is -log sigmoid(rc - rr - m)
    m = mx.array([0.5, -0.25])
    loss_m, _ = reward_model_loss(model, {"tokens": tokens, "last": last, "margin": m})
    assert loss_m.item() == pytest.approx(float(np.mean(np.logaddexp(0, -(rc - rr - [0.5, -0.25])))), rel=1e-5)


def _pairs(n: int, seed: int) -> list[dict]:
    """Reversal prompts: chosen the reversed digits, rejected the digits as given with a word tacked on (a difference
    a reward model on an untrained backbone can learn in a minute; the SRF flow trains on real samples)."""
    rows, _ = splits("reverse", n, 1, seed=seed, min_len=4)
    rng = random.Random(seed)
    out = []
    for e in rows:
        wrong = f"{e.digits} {rng.choice(['maybe', 'sure', 'okay', 'so'])}"
        out.append(
            {
                "prompt": e.prompt,
                "chosen": e.answer,
                "rejected": wrong,
                "chosen_score": 1.0,
                "rejected_score": rng.uniform(0, 0.5),
            }
        )
    return out


@pytest.mark.parametrize("lora", [None, {"rank": 8, "scale": 20.0}])
def test_a_trained_reward_model_ranks_held_out_pairs_and_scores_from_its_directory(tiny_model_dir, tmp_path, lora):
    lm = load_model(tiny_model_dir)
    train_pairs, held = _pairs(240, seed=3), _pairs(60, seed=4)
    assert not {p["prompt"] for p in train_pairs} & {p["prompt"] for p in held}
    cfg = RewardTrainingConfig(
        # 3e-4 for LoRA too: at 1e-3 held-out accuracy ranged 0.43-1.0 over seeds 0-2 (measured), at 3e-4 it was 1.0
        train=TrainConfig(steps=60, batch_size=16, learning_rate=3e-4, warmup_steps=5, lora=lora),
        margin_scale=0.5,
    )
    model, result = fit_reward_model(lm.model, lm.tokenizer, train_pairs, cfg)
    assert {"loss", "accuracy", "margin"} <= set(result.history[-1])
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    out = save_reward_model(model, tiny_model_dir, tmp_path / "rm", chat=True, max_len=512)
    scorer = load_reward_model(out)
    m = score_pairs(scorer, held)
    assert m["accuracy"] >= 0.9, m  # untrained: ~0.5
    assert m["margin"] > 0
    scores = scorer.score([p["prompt"] for p in held[:4]], [p["chosen"] for p in held[:4]])
    assert all(0 < s < 1 for s in scores)
    # the directory is also a plain model directory mlx-lm loads (the head is not one of its weight files)
    assert load_model(out).model is not None


def test_a_directory_without_the_reward_config_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="not a reward model directory"):
        load_reward_model(tiny_model_dir)


def test_batches_point_at_each_rows_last_real_token(tiny_model_dir):
    from realign.score.reward_model import reward_model_batches

    lm = load_model(tiny_model_dir)
    pairs = [
        {"prompt": "Reverse: 12", "chosen": "21", "rejected": "12 twelve"},
        {"prompt": "Reverse: 123456", "chosen": "654321", "rejected": "1"},
    ]
    batch = reward_model_batches(lm.tokenizer, pairs, TrainConfig(batch_size=2, seed=0))(0)
    tokens, last = np.array(batch["tokens"]), np.array(batch["last"])
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    for row, i in zip(tokens, last):
        assert row[i] == eos  # the appended stop token ends every completion ...
        assert (row[i + 1 :] == pad).all()  # ... and only padding follows it
    assert len(set(last.tolist())) > 1  # rows of different lengths: one index per row, not the padded length


def test_a_damaged_reward_model_directory_says_what_is_wrong(tiny_model_dir, tmp_path):
    lm = load_model(tiny_model_dir)
    out = save_reward_model(sequence_reward_model(lm.model), tiny_model_dir, tmp_path / "rm")
    (out / "score_head.safetensors").unlink()
    with pytest.raises(ValueError, match="reward head is missing"):
        load_reward_model(out)
    (out / "reward_config.json").write_text('{"type": "something-else"}')
    with pytest.raises(ValueError, match="expected 'realign-reward-model'"):
        load_reward_model(out)


def test_stage_2_can_score_with_a_reward_model(tiny_model_dir, tmp_path):
    from realign.score.sampling import PairsConfig, sample_and_score

    lm = load_model(tiny_model_dir)
    out = save_reward_model(sequence_reward_model(lm.model, seed=2), tiny_model_dir, tmp_path / "rm")
    scorer = load_reward_model(out)
    cfg = PairsConfig(
        scorer="reward_model", reward_model=str(out), generation={"n": 2, "max_tokens": 4, "batch_size": 8}
    )
    prompts, answers = ["Copy: 12", "Copy: 345"], ["12", "345"]
    scored = sample_and_score(lm, prompts, answers, cfg, seed=0, reward_model=scorer)
    for p, texts, scores in zip(prompts, scored.texts, scored.scores):
        assert scores == pytest.approx(scorer.score([p] * len(texts), texts))
        assert all(0 < s < 1 for s in scores)
    # the second, independent judgement is exact match against the known answers
    assert scored.second == [[float(t.strip() == a) for t in ts] for ts, a in zip(scored.texts, answers)]
