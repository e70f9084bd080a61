"""Preference-optimization losses on MLX arrays, with TRL's formulas and names.

All inputs are per-example sequence log-probabilities, shape [batch]:
summed over completion tokens for DPO's sigmoid/hinge/robust losses (as TRL does),
length-averaged for IPO, ORPO and SimPO (the caller passes averages, as TRL does).
Each function returns per-example losses; the caller takes the mean.

References: DPO (Rafailov et al. 2023), cDPO/robust (Chowdhury et al. 2024),
IPO (Azar et al. 2023), RPO (Pang et al. 2024), ORPO (Hong et al. 2024),
CPO (Xu et al. 2024), SimPO (Meng et al. 2024); TRL's DPO/ORPO/CPO trainers.
"""

from __future__ import annotations

from typing import Literal

import mlx.core as mx
import mlx.nn as nn

DPOLossType = Literal["sigmoid", "hinge", "ipo", "robust"]
CPOLossType = Literal["sigmoid", "simpo"]


def _preference_losses(logits: mx.array, beta: float, loss_type: str, label_smoothing: float) -> mx.array:
    """Per-example loss from the preference logits (log-ratio differences)."""
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


def orpo_loss(
    policy_chosen_logps: mx.array, policy_rejected_logps: mx.array, beta: float = 0.1
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """ORPO's odds-ratio term on length-averaged log-probs (no reference model).

    log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r)).
    Returns (losses, chosen_rewards, rejected_rewards, log_odds) with
    losses = -beta * log sigmoid(log_odds) per example; the ORPO objective is
    NLL(chosen) + losses.mean() (TRL writes it as nll - mean(beta * log sigmoid(log_odds))).
    Rewards are beta * average log-prob, as in TRL.
    """
    # log1p(-exp(x)) for x < 0; clip keeps it finite when a sequence has probability ~1.
    c = mx.minimum(policy_chosen_logps, -1e-6)
    r = mx.minimum(policy_rejected_logps, -1e-6)
    log_odds = (c - r) - (mx.log1p(-mx.exp(c)) - mx.log1p(-mx.exp(r)))
    losses = -beta * nn.log_sigmoid(log_odds)
    return (
        losses,
        mx.stop_gradient(beta * policy_chosen_logps),
        mx.stop_gradient(beta * policy_rejected_logps),
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


def bradley_terry_loss(chosen_rewards: mx.array, rejected_rewards: mx.array) -> mx.array:
    """Reward-model loss -log sigmoid(r_c - r_r), per example."""
    return -nn.log_sigmoid(chosen_rewards - rejected_rewards)
