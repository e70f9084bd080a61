"""Metrics against hand-computed values."""

import math

import mlx.core as mx
import pytest

from realign.eval.metrics import (
    agreement_rate,
    capability_retention,
    decontamination,
    exact_match_accuracy,
    expected_calibration_error,
    ifd_score,
    mean_entropy,
    mean_kl,
    preference_gap,
    reward_accuracy,
    token_entropy,
    token_kl,
    winner,
)

# Two-token vocabulary distributions, written as logits of known probabilities.
P = [0.5, 0.5]
Q = [0.25, 0.75]


def logits_of(*dists):
    return mx.array([[math.log(p) for p in d] for d in dists])


def test_kl_of_a_small_distribution():
    # KL(P || Q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3) = 0.143841
    kl = token_kl(logits_of(P), logits_of(Q))
    assert kl.tolist() == pytest.approx([0.5 * math.log(2) + 0.5 * math.log(2 / 3)], abs=1e-6)
    assert kl.tolist() == pytest.approx([0.143841], abs=1e-6)
    # KL is not symmetric: KL(Q || P) = 0.25 ln 0.5 + 0.75 ln 1.5 = 0.130812
    assert token_kl(logits_of(Q), logits_of(P)).tolist() == pytest.approx([0.130812], abs=1e-6)


def test_kl_is_invariant_to_logit_shifts_and_zero_for_itself():
    a = mx.array([[1.0, 2.0, 3.0]])
    assert token_kl(a, a + 5.0).tolist() == pytest.approx([0.0], abs=1e-6)


def test_entropy_of_a_small_distribution():
    # H(Q) = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335; H(uniform over 2) = ln 2
    assert token_entropy(logits_of(Q, P)).tolist() == pytest.approx([0.562335, math.log(2)], abs=1e-6)


def test_masked_means_count_completion_tokens_only():
    pol = mx.stack([logits_of(P, Q), logits_of(Q, Q)])  # [2, 2, V]
    ref = mx.stack([logits_of(Q, Q), logits_of(P, Q)])
    mask = mx.array([[1.0, 1.0], [1.0, 0.0]])
    # positions counted: (P||Q)=0.143841, (Q||Q)=0, (Q||P)=0.130812 -> mean 0.091551
    assert mean_kl(pol, ref, mask) == pytest.approx((0.143841 + 0 + 0.130812) / 3, abs=1e-6)
    # entropies counted: H(P)=0.693147, H(Q)=0.562335, H(Q)=0.562335
    assert mean_entropy(pol, mask) == pytest.approx((0.693147 + 2 * 0.562335) / 3, abs=1e-6)
    assert math.isnan(mean_kl(pol, ref, mx.zeros((2, 2))))
    # the same numbers from the completion positions alone, in one pass
    from realign.eval.metrics import masked_kl_and_entropy

    kl, entropy = masked_kl_and_entropy(pol, ref, mask)
    assert kl == pytest.approx((0.143841 + 0 + 0.130812) / 3, abs=1e-6)
    assert entropy == pytest.approx((0.693147 + 2 * 0.562335) / 3, abs=1e-6)
    no_ref = masked_kl_and_entropy(pol, None, mask)
    assert math.isnan(no_ref[0]) and no_ref[1] == pytest.approx(entropy)
    assert all(math.isnan(v) for v in masked_kl_and_entropy(pol, ref, mx.zeros((2, 2))))


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_kl_and_entropy_rows_by_either_backend_match_hand_computed_values(backend):
    # kl_and_entropy_rows runs numpy on a CPU and MLX on a GPU: both give the hand-computed values.
    from realign.eval.metrics import _kl_and_entropy_mlx, _kl_and_entropy_numpy

    rows = _kl_and_entropy_numpy if backend == "numpy" else _kl_and_entropy_mlx
    pol = mx.stack([logits_of(P, Q)[0], logits_of(Q, Q)[0], logits_of(Q, Q)[0]]) + 7.0  # shifts change nothing
    ref = mx.stack([logits_of(Q, Q)[0], logits_of(Q, Q)[0], logits_of(P, Q)[0]]) - 3.0
    kl, entropy = rows(pol, ref)
    assert kl == pytest.approx((0.143841 + 0 + 0.130812) / 3, abs=1e-6)  # (P||Q), (Q||Q), (Q||P)
    assert entropy == pytest.approx((0.693147 + 2 * 0.562335) / 3, abs=1e-6)  # H(P), H(Q), H(Q)
    no_ref = rows(pol, None)
    assert math.isnan(no_ref[0]) and no_ref[1] == pytest.approx(entropy)
    big = mx.random.normal((37, 2048), key=mx.random.key(0)) * 3
    other = big + mx.random.normal((37, 2048), key=mx.random.key(1))
    assert rows(big, other) == pytest.approx(_kl_and_entropy_mlx(big, other), rel=1e-5)
    assert rows(big, big)[0] == pytest.approx(0.0, abs=1e-6)
    # bfloat16 logits (a bf16 model's) are read as float32
    half = rows(big.astype(mx.bfloat16), other.astype(mx.bfloat16))
    assert half == pytest.approx(_kl_and_entropy_mlx(big.astype(mx.bfloat16), other.astype(mx.bfloat16)), rel=1e-5)


def test_kl_of_a_model_with_itself_is_zero(tiny_model_dir):
    from realign.model.load import load_model
    from realign.model.logprobs import collate, encode

    lm = load_model(tiny_model_dir)
    batch = collate([encode(lm.tokenizer, "Reverse 123", "321"), encode(lm.tokenizer, "hi", "hello there")])
    logits = lm.model(batch.tokens[:, :-1])
    assert mean_kl(logits, lm.model(batch.tokens[:, :-1]), batch.mask) == pytest.approx(0.0, abs=1e-7)
    assert mean_entropy(logits, batch.mask) > 0


def test_preference_metrics():
    assert reward_accuracy([1.0, 0.5, 0.2], [0.0, 0.5, 0.3]) == pytest.approx(1 / 3)  # tie counts as wrong
    assert preference_gap([0.9, 0.6], [0.5, 0.6]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preference_gap([1.2], [0.1])
    a = [winner(0.9, 0.1), winner(0.5, 0.5), winner(0.2, 0.3), winner(1, 0)]
    assert a == [1, 0, -1, 1]
    assert agreement_rate(a, [1, 1, -1, -1]) == 0.5
    assert math.isnan(agreement_rate([], []))


def test_decontamination_with_13_grams():
    train = ["the quick brown fox jumps over the lazy dog near the river bank today and then sleeps"]
    evals = [
        "yesterday the quick brown fox jumps over the lazy dog near the river bank today",  # shares a 13-gram
        "the quick brown fox jumps over the lazy cat near the river bank today",  # breaks every 13-gram
        "Reverse 12345",  # short: checked whole
    ]
    r = decontamination(train + ["please reverse 12345 now"], evals, n=13)
    assert r.contaminated == [0, 2] and r.score == pytest.approx(1 / 3) and r.short_items == 1
    assert decontamination(train, evals, n=3).contaminated == [0, 1]


def test_ifd_retention_exact_match_and_ece():
    assert ifd_score(1.5, 3.0) == 0.5 and math.isnan(ifd_score(1.0, 0.0))
    r = capability_retention({"copy": 0.8, "reverse": 0.0, "ppl_acc": 0.5}, {"copy": 0.76, "reverse": 0.3})
    assert r.per_benchmark == {"copy": pytest.approx(0.95)}
    assert r.retention == pytest.approx(0.95)
    assert set(r.not_computed) == {"reverse", "ppl_acc"}
    assert exact_match_accuracy([" 321", "12"], ["321", "21"]) == 0.5
    # two bins used: conf 0.9 (2 items, 1 correct): |0.5 - 0.9| * 0.5; conf 0.2 (2 items, 0 correct): |0 - 0.2| * 0.5
    assert expected_calibration_error([0.9, 0.9, 0.2, 0.2], [True, False, False, False]) == pytest.approx(0.3)


def test_spearman_by_hand():
    from realign.eval.metrics import spearman

    # ranks of a: 1 2 3 4, of b: 2 1 4 3 -> d = -1 1 -1 1, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert spearman([1, 2, 3, 4], [20, 10, 40, 30]) == pytest.approx(0.6)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: b ranks 1.5 1.5 3; Pearson of (1,2,3) with (1.5,1.5,3) = 0.866025...
    assert spearman([1, 2, 3], [0.0, 0.0, 1.0]) == pytest.approx(math.sqrt(3) / 2)
    # NaN pairs are left out; a constant side has no correlation
    assert spearman([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [1]))


def test_grouped_spearman_averages_within_groups():
    from realign.eval.metrics import grouped_spearman

    # group p: perfect agreement (1.0); group q: reversed (-1.0); group r: constant scores, left out
    rho, n = grouped_spearman(["p", "p", "p", "q", "q", "r", "r"], [1, 2, 3, 1, 2, 5, 6], [10, 20, 30, 2, 1, 0, 0])
    assert (rho, n) == (pytest.approx(0.0), 2)
    rho, n = grouped_spearman(["p", "p", "q"], [1, 2, 3], [1, 2, 3])  # q has one sample: undefined
    assert (rho, n) == (pytest.approx(1.0), 1)
    assert math.isnan(grouped_spearman([], [], [])[0])
