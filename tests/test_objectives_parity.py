"""preference_loss's metrics against hand-computed values, where realign and TRL 1.16 could part (docs/PARITY.md)."""

import math

import mlx.core as mx
import mlx.nn as nn
import pytest

from realign.train.batches import POLICY_LOGITS
from realign.train.objectives import PreferenceLossConfig, preference_loss

LN2 = math.log(2)


class Bigram(nn.Module):
    """logits = log P[previous token]: the next-token log-probs are log 0.5 or log 0.25, known by hand."""

    def __init__(self):
        super().__init__()
        self.table = mx.log(mx.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]))

    def __call__(self, tokens):
        return self.table[tokens]


# Two pairs; rows 0-1 chosen, 2-3 rejected. mask[b, t] = 1: token t+1 is a completion token.
# chosen 0: transitions 0->0, 0->0 (mask 0011)        -> sum -2 ln2, 2 tokens
# chosen 1: 0->0 x4 (mask 1111)                        -> sum -4 ln2, 4 tokens
# rejected 0: 0->1, 1->2, 2->0 (mask 0111), 0.25 each  -> sum -6 ln2, 3 tokens
# rejected 1: 0->1 (0.25), 1->1 (0.5) (mask 0011)      -> sum -3 ln2, 2 tokens
TOKENS = mx.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 2, 0], [0, 0, 0, 1, 1]])
MASK = mx.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=mx.float32)
# Summed reference log-probs chosen so the summed log-ratios are: chosen [2 - 2 ln2, 1.0], rejected [4 - 6 ln2, 0.6].
REF_C = mx.array([-2.0, -4 * LN2 - 1.0])
REF_R = mx.array([-4.0, -3 * LN2 - 0.6])
BATCH = {"tokens": TOKENS, "mask": MASK, "ref_chosen": REF_C, "ref_rejected": REF_R}


def run(**cfg):
    loss, metrics = preference_loss(PreferenceLossConfig(**cfg))(Bigram(), BATCH)
    logits = metrics.pop(POLICY_LOGITS)  # handed to the loop's KL/entropy, not a metric
    assert mx.array_equal(logits, Bigram()(TOKENS[:, :-1])).item()
    return loss.item(), {k: v.item() for k, v in metrics.items()}


def test_logps_by_hand():
    _, m = run()
    assert m["logps/chosen"] == pytest.approx(-3 * LN2, abs=1e-5)  # mean(-2 ln2, -4 ln2)
    assert m["logps/rejected"] == pytest.approx(-4.5 * LN2, abs=1e-5)  # mean(-6 ln2, -3 ln2)


def test_ipo_logs_rewards_of_summed_logps_as_trl():
    loss, m = run(loss_type="ipo", beta=0.1)
    # loss on averaged log-ratios: pair 0: (2 - 2 ln2)/2 - (4 - 6 ln2)/3 = 0.306853 + 0.052961 = 0.359814,
    # pair 1: 1.0/4 - 0.6/2 = -0.05; mean((z - 1/(2*0.1))^2) = (4.640186^2 + 5.05^2) / 2 = 23.516913
    assert loss == pytest.approx(23.516913, abs=1e-4)
    # rewards: beta * summed log-ratios = chosen [0.061371, 0.1], rejected [-0.015888, 0.06]
    assert m["rewards/chosen"] == pytest.approx(0.080685, abs=1e-5)
    assert m["rewards/rejected"] == pytest.approx(0.022056, abs=1e-5)
    assert m["rewards/margins"] == pytest.approx(0.058629, abs=1e-5)
    # pair 1 wins on sums (0.1 > 0.06) though it loses on averages (0.025 < 0.03): accuracy 1, not 0.5
    assert m["rewards/accuracies"] == 1.0


def test_ipo_rewards_carry_no_gradient():
    model = Bigram()
    cfg = PreferenceLossConfig(loss_type="ipo", beta=0.1)

    def total(table, with_rewards):
        model.table = table
        loss, m = preference_loss(cfg)(model, BATCH)
        return loss + (m["rewards/chosen"] + m["rewards/margins"] if with_rewards else 0.0)

    g_with = mx.grad(lambda t: total(t, True))(Bigram().table)
    g_without = mx.grad(lambda t: total(t, False))(Bigram().table)
    assert mx.allclose(g_with, g_without).item() and mx.abs(g_without).sum().item() > 0


def test_sigmoid_rewards_unchanged_summed():
    loss, m = run(beta=0.1)
    assert m["rewards/chosen"] == pytest.approx(0.080685, abs=1e-5)
    assert m["rewards/margins"] == pytest.approx(0.058629, abs=1e-5)
    # logits = summed log-ratio gaps [(2 - 2 ln2) - (4 - 6 ln2), 1.0 - 0.6] = [0.772589, 0.4]
    # loss = mean(softplus(-0.1 z)) = (0.655264 + 0.673347) / 2 = 0.664305
    assert loss == pytest.approx(0.664305, abs=1e-5)


def test_sigmoid_label_smoothing_is_cdpo():
    # TRL 1.16's DPOTrainer ignores label_smoothing for "sigmoid"; realign keeps cDPO (docs/PARITY.md):
    # (1 - 0.2) softplus(-0.1 z) + 0.2 softplus(0.1 z) for z = [0.772589, 0.4] -> [0.670715, 0.681347], mean 0.676031
    loss, _ = run(beta=0.1, label_smoothing=0.2)
    assert loss == pytest.approx(0.676031, abs=1e-5)


def test_orpo_nll_is_completion_only():
    # NLL over the chosen completion tokens: 6 tokens of log 0.5 -> ln 2 (TRL would add the prompt tokens).
    loss, m = run(method="orpo", beta=0.1)
    assert m["nll"] == pytest.approx(LN2, abs=1e-6)
    # averaged log-probs: chosen [-ln2, -ln2], rejected [-2 ln2, -1.5 ln2]; rewards are beta * those
    assert m["rewards/chosen"] == pytest.approx(-0.1 * LN2, abs=1e-6)
    assert m["rewards/rejected"] == pytest.approx(-0.1 * 1.75 * LN2, abs=1e-6)
    # log odds: log(1/1) - log((1/4)/(3/4)) = ln 3 = 1.098612 and log(1) - log(2^-1.5/(1 - 2^-1.5)) = 0.603456
    # loss = ln 2 + 0.1 * mean(softplus(-1.098612), softplus(-0.603456)) = 0.693147 + 0.1 * 0.361973 = 0.729345
    assert loss == pytest.approx(0.729345, abs=1e-5)
