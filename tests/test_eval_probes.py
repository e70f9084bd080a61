"""Probes: the accuracy sweep and the KL probe, checked against direct computation on the tiny model."""

import math

import mlx.core as mx
import numpy as np
import pytest

from realign.eval.metrics import token_kl
from realign.eval.probes import eval_metrics, kl_probe, probe_examples, score_eval_sets
from realign.model.load import load_model, weights_finite
from realign.model.logprobs import encode
from realign.model.tiny import TinyModelConfig, build_tiny_model


class Items:
    def __init__(self, name, prompts, answers):
        self.name, self.prompts, self.answers = name, prompts, answers


def test_probe_examples_are_chosen_then_rejected():
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(5)]
    assert probe_examples(rows, limit=2) == [("p0", "c0"), ("p1", "c1"), ("p0", "r0"), ("p1", "r1")]
    assert probe_examples([], limit=2) == []


def test_kl_probe_is_zero_for_the_same_model_and_matches_a_per_example_mean(tiny_model_dir, tmp_path):
    a = load_model(tiny_model_dir)
    other = load_model(build_tiny_model(tmp_path / "other", TinyModelConfig(seed=1)))
    examples = [("Reverse: 123", "321"), ("Copy: 4567", "4567 and more")]
    assert kl_probe(a.model, a.model, a.tokenizer, examples) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(kl_probe(a.model, other.model, a.tokenizer, []))
    # by hand: per-token KL over the completion tokens of each example, token-weighted over both
    total, count = 0.0, 0
    for p, c in examples:
        enc = encode(a.tokenizer, p, c)
        tokens = mx.array([enc.ids])  # unpadded, one example at a time
        kl = token_kl(a.model(tokens[:, :-1]), other.model(tokens[:, :-1]))[0]
        mask = np.array([t + 1 >= enc.n_prompt for t in range(len(enc.ids) - 1)], dtype=float)  # completion targets
        total += float((np.array(kl) * mask).sum())
        count += mask.sum()
    assert kl_probe(a.model, other.model, a.tokenizer, examples) == pytest.approx(total / count, rel=1e-4)


def test_accuracy_sweep_names_metrics_per_set(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    sets = [Items("a", ["Copy: 12", "Copy: 34"], ["12", "34"]), Items("b", ["Reverse: 56"], ["65"])]
    scored = score_eval_sets(lm.model, lm.tokenizer, sets, max_tokens=4)
    assert set(scored) == {"a", "b"} and len(scored["a"].exact) == 2 and len(scored["b"].scores) == 1
    metrics = eval_metrics(scored)
    assert set(metrics) == {"a_accuracy", "a_score", "b_accuracy", "b_score"}
    assert metrics["a_accuracy"] == np.mean(scored["a"].exact)


def test_weights_finite_sees_a_nan(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    assert weights_finite(lm.model)
    w = lm.model.model.embed_tokens.weight
    lm.model.model.embed_tokens.weight = mx.where(mx.arange(w.shape[0])[:, None] == 3, mx.array(float("nan")), w)
    assert not weights_finite(lm.model)
