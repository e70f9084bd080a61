"""Losses against hand-computed values (TRL's formulas)."""

import math

import mlx.core as mx
import pytest

from realign.train.losses import (
    ORPO_MAX_LOGP,
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    log1mexp,
    nll_loss,
    orpo_loss,
    rpo_loss,
)

# Two pairs. Pair 0: policy prefers chosen more than the reference does (logits = 1.5).
# Pair 1: the policy has moved the wrong way (logits = -1.0).
PC, PR = mx.array([-10.0, -8.0]), mx.array([-12.0, -7.0])
RC, RR = mx.array([-11.0, -8.5]), mx.array([-11.5, -8.5])
LOGITS = [(-10 + 12) - (-11 + 11.5), (-8 + 7) - (-8.5 + 8.5)]  # [1.5, -1.0]


def softplus(x):
    return math.log1p(math.exp(x))


def close(arr, expected, tol=1e-5):
    assert arr.tolist() == pytest.approx(expected, abs=tol)


def test_logits_as_computed_by_hand():
    assert LOGITS == [1.5, -1.0]


def test_dpo_sigmoid():
    losses, cr, rr = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # -log sigmoid(z) = log(1 + e^-z): z = 0.15 -> 0.620957, z = -0.1 -> 0.744397
    close(losses, [0.620957, 0.744397])
    close(cr, [0.1 * (-10 + 11), 0.1 * (-8 + 8.5)])  # [0.1, 0.05]
    close(rr, [0.1 * (-12 + 11.5), 0.1 * (-7 + 8.5)])  # [-0.05, 0.15]


def test_dpo_sigmoid_label_smoothing():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)
    z = [0.75, -0.5]
    close(losses, [0.8 * softplus(-x) + 0.2 * softplus(x) for x in z])  # [0.53687, 0.87408]
    close(losses, [0.536871, 0.874077])


def test_dpo_robust():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)
    robust, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="robust", label_smoothing=0.2)
    z = [0.75, -0.5]
    close(robust, [(0.8 * softplus(-x) - 0.2 * softplus(x)) / 0.6 for x in z])
    close(robust, [0.136871, 1.140744])
    plain, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="robust")
    close(plain, [softplus(-0.75), softplus(0.5)])  # label_smoothing 0: same as sigmoid
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.5)


def test_dpo_hinge():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=2.0, loss_type="hinge")
    close(losses, [max(0, 1 - 3.0), 1 + 2.0])  # [0, 3]


def test_dpo_ipo_on_averaged_logps():
    # IPO takes length-averaged log-probs; here: chosen 4 tokens, rejected 5 tokens.
    pc, pr, rc, rr = PC / 4, PR / 5, RC / 4, RR / 5
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    logit0 = (-10 / 4 + 12 / 5) - (-11 / 4 + 11.5 / 5)  # -0.1 - (-0.45) = 0.35
    logit1 = (-8 / 4 + 7 / 5) - (-8.5 / 4 + 8.5 / 5)  # -0.6 - (-0.425) = -0.175
    close(losses, [(logit0 - 5) ** 2, (logit1 - 5) ** 2])  # [21.6225, 26.780625]
    close(losses, [21.6225, 26.780625], tol=1e-3)


def test_unknown_loss_type_and_bad_beta():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(PC, PR, RC, RR, beta=0)


def test_nll_and_rpo():
    token_logps = mx.array([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    mask = mx.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    nll = nll_loss(token_logps, mask)
    close(nll, (1 + 2 + 0.5 * 3) / 5)  # 0.9: the masked -9 does not count
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1)
    close(rpo_loss(losses, nll, alpha=0.5), (0.620957 + 0.744397) / 2 + 0.45)


def test_orpo():
    c, r = mx.array([-0.5, -2.0]), mx.array([-1.0, -0.25])
    losses, cr, rr, log_odds = orpo_loss(c, r, beta=0.2)

    def log_odds_of(lp):  # log(p / (1 - p))
        p = math.exp(lp)
        return math.log(p / (1 - p))

    lo = [log_odds_of(-0.5) - log_odds_of(-1.0), log_odds_of(-2.0) - log_odds_of(-0.25)]
    close(log_odds, lo)
    close(log_odds, [0.974077, -3.113278], tol=1e-4)
    close(losses, [0.2 * softplus(-x) for x in lo])
    close(cr, [-0.1, -0.4])
    close(rr, [-0.2, -0.05])


def test_cpo_and_simpo():
    c, r = mx.array([-0.5, -2.0]), mx.array([-1.0, -0.25])
    losses, cr, _ = cpo_loss(c, r, beta=1.0)
    close(losses, [softplus(-0.5), softplus(1.75)])
    close(cr, [-0.5, -2.0])
    simpo, _, _ = cpo_loss(c, r, beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    # logits = (c - r) - gamma / beta = [0.25, -2.0]; loss = softplus(-beta * logits)
    close(simpo, [softplus(-0.5), softplus(4.0)])
    close(simpo, [0.474077, 4.018150])


def test_bradley_terry():
    close(bradley_terry_loss(mx.array([2.0, 0.0]), mx.array([1.0, 0.0])), [softplus(-1.0), math.log(2)])


def test_bradley_terry_margin():
    # -log sigmoid(r_c - r_r - m): 2 - 1 - 0.5 = 0.5 -> 0.474077; 0 - 0 + 1 = 1 -> 0.313262; 3 - 1 - 2.5 -> 0.974077
    rc, rr = mx.array([2.0, 0.0, 3.0]), mx.array([1.0, 0.0, 1.0])
    with_margin = bradley_terry_loss(rc, rr, margin=mx.array([0.5, -1.0, 2.5]))
    close(with_margin, [0.474077, 0.313262, 0.974077])
    close(with_margin, [softplus(-0.5), softplus(-1.0), softplus(0.5)])
    close(bradley_terry_loss(rc, rr, mx.array(0.5)), [0.474077, softplus(0.5), softplus(-1.5)])  # a scalar margin
    close(bradley_terry_loss(rc, rr, None), bradley_terry_loss(rc, rr).tolist())  # None: no margin
    close(bradley_terry_loss(rc, rr, mx.zeros(3)), [softplus(-1.0), math.log(2), softplus(-2.0)])


# log(1 - e^x) in float64, by hand: -log(-expm1(x)) near 0, log1p(-exp(x)) below -ln 2 (where the former loses
# digits: at -30 it gives -9.35918e-14 in float64).
LOG1MEXP = {
    -1e-7: -16.11809570095832,
    -1e-4: -9.210390371559516,
    -0.5: -0.9327521295671886,
    -3.0: -0.05106918094270159,
    -30.0: -9.357622968840613e-14,
}


def test_log1mexp_matches_float64():
    xs = list(LOG1MEXP)
    got = log1mexp(mx.array(xs)).tolist()
    for x, g in zip(xs, got, strict=True):
        assert g == pytest.approx(LOG1MEXP[x], rel=2e-6), x
    # The naive float32 formula this replaces is off by 1% at -1e-7 and 0.06% at -1e-4: the test can tell.
    naive = mx.log1p(-mx.exp(mx.array([-1e-7, -1e-4]))).tolist()
    assert abs(naive[0] / LOG1MEXP[-1e-7] - 1) > 1e-3 and abs(naive[1] / LOG1MEXP[-1e-4] - 1) > 1e-5
    assert log1mexp(mx.array([0.0])).item() == -math.inf


def test_log1mexp_gradient():
    # d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / (e^-x - 1); -0.7 is just below the branch point -ln 2
    xs = [-1e-6, -1e-4, -0.5, -0.7, -3.0, -30.0]
    g = mx.grad(lambda x: log1mexp(x).sum())(mx.array(xs)).tolist()
    for x, gx in zip(xs, g, strict=True):
        assert gx == pytest.approx(-1 / math.expm1(-x), rel=1e-4), x


def test_orpo_log_odds_precise_near_zero():
    # log odds(p) = lp - log(1 - e^lp); chosen -1e-4 vs rejected -2, chosen -1e-6 (the clip) vs rejected -0.5,
    # in float64 by hand: 11.064876913690657 and 13.382757928397046.
    _, _, _, log_odds = orpo_loss(mx.array([-1e-4, -1e-6]), mx.array([-2.0, -0.5]), beta=0.1)
    assert log_odds.tolist() == pytest.approx([11.064876913690657, 13.382757928397046], rel=1e-5)


def test_orpo_finite_at_probability_one():
    near = mx.array([0.0, -1e-9, -1e-7, -1e-6, -1e-5])
    far = mx.array([-1.0, -1.0, -1.0, -1.0, -1.0])
    for c, r in ((near, far), (far, near), (near, near)):
        losses, _, _, log_odds = orpo_loss(c, r, beta=0.1)
        gc, gr = mx.grad(lambda c, r: orpo_loss(c, r, beta=0.1)[0].sum(), argnums=(0, 1))(c, r)
        for arr in (losses, log_odds, gc, gr):
            assert all(math.isfinite(v) for v in arr.tolist())
    # At and above the clip the log-probs are taken as ORPO_MAX_LOGP: 0 and -1e-9 give the loss of -1e-6.
    losses, _, _, _ = orpo_loss(near, far, beta=0.1)
    assert losses[0].item() == losses[1].item() == losses[3].item() and ORPO_MAX_LOGP == -1e-6
    # chosen at the clip vs rejected -1: log odds = -1e-6 - log(1 - e^-1e-6) + 1 + log(1 - e^-1)
    # = -1e-6 + 13.815510 + 1 - 0.458675 = 14.356835
    close(orpo_loss(mx.array([-1e-6]), mx.array([-1.0]))[3], [14.356835], tol=1e-4)


def test_orpo_upcasts_to_float32():
    losses, cr, _, log_odds = orpo_loss(mx.array([-0.5], mx.bfloat16), mx.array([-1.0], mx.bfloat16), beta=0.2)
    assert losses.dtype == cr.dtype == log_odds.dtype == mx.float32
    close(log_odds, [0.974077], tol=1e-4)


def test_gradient_flows_through_policy_only():
    def f(pc):
        losses, cr, _ = dpo_loss(pc, PR, RC, RR, beta=0.1)
        return losses.sum() + cr.sum()  # rewards are stop-gradient: they must add no gradient

    g = mx.grad(f)(PC)
    # d/dz softplus(-0.1 z) = -0.1 sigmoid(-0.1 z)
    close(g, [-0.1 / (1 + math.exp(0.15)), -0.1 / (1 + math.exp(-0.1))])
