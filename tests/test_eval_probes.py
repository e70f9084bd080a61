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


def test_win_rate_counts_ties_as_half_and_leaves_unrated_items_out():
    from realign.eval.probes import outcomes, win_rate, win_rate_comparison

    nan = float("nan")
    new, old = [0.9, 0.5, 0.1, 0.7, nan, 0.6], [0.1, 0.5, 0.2, 0.3, 0.9, nan]
    # by hand: win, tie, loss, win; the last two unrated on one side
    assert outcomes(new, old) == [1.0, 0.5, 0.0, 1.0]
    assert win_rate(new, old) == pytest.approx(2.5 / 4)
    c = win_rate_comparison("t_score", new, old)
    assert c.metric == "t_score_win_rate" and c.second == "even" and c.items == 4
    assert c.first_value == pytest.approx(0.625) and c.second_value == 0.5 and c.difference == pytest.approx(0.125)
    assert c.within_noise  # four items cannot tell 0.625 from a coin toss
    # 60 wins of 60: the interval is the point 1.0, far from even
    sure = win_rate_comparison("t_score", [1.0] * 60, [0.0] * 60)
    assert (sure.first_value, sure.ci_low, sure.ci_high) == (1.0, 0.5, 0.5) and not sure.within_noise
    assert math.isnan(win_rate([nan], [1.0]))


class Rater:
    """A scorer that rates an answer by its length (NaN for a 'Reverse' prompt, as a judge's reply without a rating):
    what a judge does, without a model."""

    name = "length"

    def score(self, prompts, completions):
        assert len(prompts) == len(completions)
        return [float("nan") if p.startswith("Reverse") else min(len(c), 10) / 10 for p, c in zip(prompts, completions)]


class OpenItems(Items):
    format, max_tokens = "open", None

    def __init__(self, name, prompts):
        super().__init__(name, prompts, [""] * len(prompts))
        self.scorer = ("judge", "/nowhere/judge")


def test_an_open_set_is_rated_by_its_scorer_and_has_no_accuracy(tiny_model_dir):
    from realign.eval.probes import describe_evaluation, rated

    lm = load_model(tiny_model_dir)
    prompts = ["Copy: 12", "Reverse: 345", "Copy: 6789"]
    res = rated(lm.model, lm.tokenizer, prompts, Rater(), max_tokens=6)
    expected = Rater().score(prompts, res.predictions)
    assert res.open and res.scores[0::2] == expected[0::2] and math.isnan(res.accuracy) and res.exact == []
    assert math.isnan(res.scores[1]) and res.unscored == 1
    assert res.value == res.mean_score == pytest.approx((expected[0] + expected[2]) / 2) and res.per_item == res.scores
    # the sweep takes the loaded scorer for the set's (kind, path) and names only a score for it
    sets = [OpenItems("o", prompts), Items("a", ["Copy: 12"], ["12"])]
    scored = score_eval_sets(lm.model, lm.tokenizer, sets, max_tokens=6, scorers={("judge", "/nowhere/judge"): Rater()})
    assert scored["o"].scores[0::2] == expected[0::2]
    assert set(eval_metrics(scored)) == {"o_score", "a_accuracy", "a_score"}
    sets[0].role, sets[1].role = "target", "benchmark"
    said = describe_evaluation(sets, unscored=2)
    assert "o (target, 3 items): open-ended" in said and "judge /nowhere/judge" in said and "2 answers unrated" in said
    assert "a (benchmark, 1 items): exact match of greedy answers" in said


def test_perplexity_of_nothing_is_an_error_not_a_number(tiny_model_dir):
    from realign.eval.probes import perplexity

    lm = load_model(tiny_model_dir)
    with pytest.raises(ValueError, match="no held-out text"):
        perplexity(lm.model, lm.tokenizer, [])
