"""Preference-optimization losses on MLX arrays, with TRL's formulas and names.

All inputs are per-example sequence log-probabilities, shape [batch]:
summed over completion tokens for DPO's sigmoid/hinge/robust losses (as TRL does),
length-averaged for IPO, ORPO and SimPO (the caller passes averages, as TRL does).
Each function returns per-example losses; the caller takes the mean.

References: DPO (Rafailov et al. 2023), cDPO (Mitchell 2023), robust DPO (Chowdhury et al. 2024),
IPO (Azar et al. 2023), RPO (Pang et al. 2024), ORPO (Hong et al. 2024),
CPO (Xu et al. 2024), SimPO (Meng et al. 2024); TRL's DPO/ORPO/CPO trainers.
"""

from __future__ import annotations

import math
from typing import Literal

import mlx.core as mx
import mlx.nn as nn

DPOLossType = Literal["sigmoid", "hinge", "ipo", "robust"]
CPOLossType = Literal["sigmoid", "simpo"]


def _preference_losses(logits: mx.array, beta: float, loss_type: str, label_smoothing: float) -> mx.array:
    """Per-example loss from the preference logits (log-ratio differences).

    label_smoothing with "sigmoid" is conservative DPO (cDPO, Mitchell 2023): the label is taken to be flipped
    with that probability, loss = (1 - ls) * softplus(-beta z) + ls * softplus(beta z). This is what TRL 1.16's
    CPOTrainer does for sigmoid/simpo, but NOT what its DPOTrainer does: there the "sigmoid" loss ignores
    label_smoothing (it is read only by "robust", "exo_pair" and "aot*"). Kept deliberately (docs/PARITY.md);
    with label_smoothing = 0, the default, the two agree.
    """
    if loss_type == "sigmoid":
        # label_smoothing > 0 is conservative DPO: the label is wrong with that probability.
        return -nn.log_sigmoid(beta * logits) * (1 - label_smoothing) - nn.log_sigmoid(-beta * logits) * label_smoothing
    if loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"robust loss needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
        return (
            -nn.log_sigmoid(beta * logits) * (1 - label_smoothing) + nn.log_sigmoid(-beta * logits) * label_smoothing
        ) / (1 - 2 * label_smoothing)
    if loss_type == "hinge":
        return mx.maximum(1 - beta * logits, 0.0)
    if loss_type == "ipo":
        # beta plays the role of IPO's tau; the target log-ratio gap is 1 / (2 tau).
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type '{loss_type}' (expected sigmoid, hinge, ipo or robust)")


def dpo_loss(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    ref_chosen_logps: mx.array,
    ref_rejected_logps: mx.array,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[mx.array, mx.array, mx.array]:
    """DPO-family loss. Returns (losses, chosen_rewards, rejected_rewards), each [batch].

    logits = (pi_c - pi_r) - (ref_c - ref_r); the implicit rewards are
    beta * (pi - ref) for each response, with gradients stopped (they are metrics).
    The rewards are of the log-probs passed in: for IPO, which is given length-averaged log-probs, TRL logs
    beta * (summed pi - summed ref) instead, and so does objectives.preference_loss (it computes them itself).
    label_smoothing with "sigmoid" is cDPO, unlike TRL's DPOTrainer (see _preference_losses).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = _preference_losses(logits, beta, loss_type, label_smoothing)
    chosen_rewards = mx.stop_gradient(beta * (policy_chosen_logps - ref_chosen_logps))
    rejected_rewards = mx.stop_gradient(beta * (policy_rejected_logps - ref_rejected_logps))
    return losses, chosen_rewards, rejected_rewards


def nll_loss(token_logps: mx.array, mask: mx.array) -> mx.array:
    """Mean negative log-likelihood per completion token over a batch ([B, T] each; mask 1 = completion token)."""
    return -(token_logps * mask).sum() / mx.maximum(mask.sum(), 1)


def rpo_loss(dpo_losses: mx.array, chosen_nll: mx.array, alpha: float = 1.0) -> mx.array:
    """RPO: the mean DPO loss plus alpha times the NLL of the chosen responses (a scalar)."""
    return dpo_losses.mean() + alpha * chosen_nll


_LN2 = math.log(2.0)
# ORPO clips log-probs to at most this: log(1 - e^x) -> -inf and its gradient ~ -1/|x| as x -> 0. It is about
# the float32 noise floor of a log-softmax anyway. TRL does not clip (x = 0 gives inf there).
ORPO_MAX_LOGP = -1e-6


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - e^x) for x < 0, accurate to float precision over the whole range (Maechler 2012).

    log(-expm1(x)) for x > -ln 2 (where 1 - e^x cancels), log1p(-e^x) below. Each branch is evaluated only on
    inputs where it is finite, so mx.where passes no inf/nan from the unused branch into the gradient.
    x = 0 gives -inf (the exact value); x > 0 is outside the domain (nan).
    """
    near0 = x > -_LN2
    small = mx.log(-mx.expm1(mx.where(near0, x, -_LN2)))
    large = mx.log1p(-mx.exp(mx.where(near0, -_LN2, x)))
    return mx.where(near0, small, large)


def orpo_loss(
    policy_chosen_logps: mx.array, policy_rejected_logps: mx.array, beta: float = 0.1
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """ORPO's odds-ratio term on length-averaged log-probs (no reference model).

    log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r)), with log(1 - e^x) by log1mexp as in TRL, in float32
    (as TRL upcasts), and c, r clipped to at most ORPO_MAX_LOGP so loss and gradient stay finite when a
    sequence has probability ~1 (TRL does not clip).
    Returns (losses, chosen_rewards, rejected_rewards, log_odds) with
    losses = -beta * log sigmoid(log_odds) per example; the ORPO objective is
    NLL(chosen) + losses.mean() (TRL writes it as nll - mean(beta * log sigmoid(log_odds))).
    The NLL here (objectives.preference_loss) is over the chosen completion tokens only; TRL 1.16's
    ORPOTrainer takes it over prompt + completion. Kept: SFT, RPO and CPO here (and TRL's CPO) are
    completion-only too (docs/PARITY.md).
    Rewards are beta * average log-prob, as in TRL.
    """
    pc = policy_chosen_logps.astype(mx.float32)
    pr = policy_rejected_logps.astype(mx.float32)
    c = mx.minimum(pc, ORPO_MAX_LOGP)
    r = mx.minimum(pr, ORPO_MAX_LOGP)
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    losses = -beta * nn.log_sigmoid(log_odds)
    return (
        losses,
        mx.stop_gradient(beta * pc),
        mx.stop_gradient(beta * pr),
        mx.stop_gradient(log_odds),
    )


def cpo_loss(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    beta: float = 0.1,
    loss_type: CPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[mx.array, mx.array, mx.array]:
    """CPO (reference-free DPO) and SimPO. Returns (losses, chosen_rewards, rejected_rewards).

    logits = c - r, minus gamma / beta for SimPO (whose log-probs are length-averaged).
    The CPO objective adds alpha * NLL(chosen) to losses.mean() (alpha = 1 in TRL; 0 for SimPO).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logits = policy_chosen_logps - policy_rejected_logps
    if loss_type == "simpo":
        logits = logits - simpo_gamma / beta
    elif loss_type != "sigmoid":
        raise ValueError(f"unknown CPO loss_type '{loss_type}' (expected sigmoid or simpo)")
    losses = _preference_losses(logits, beta, "sigmoid", label_smoothing)
    return losses, mx.stop_gradient(beta * policy_chosen_logps), mx.stop_gradient(beta * policy_rejected_logps)


def bradley_terry_loss(
    chosen_rewards: mx.array, rejected_rewards: mx.array, margin: mx.array | None = None
) -> mx.array:
    """Reward-model loss -log sigmoid(r_c - r_r - margin), per example.

    margin ([batch] or a scalar; None = 0) is how much the chosen should beat the rejected by, as with the
    optional "margin" column of TRL's RewardTrainer (Llama 2's margin loss).
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -nn.log_sigmoid(diff)
