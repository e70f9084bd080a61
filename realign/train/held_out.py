"""Held-out preference metrics: the train/val split of the pairs, and what the policy does on the pairs it never saw."""

from __future__ import annotations

import math

import mlx.nn as nn
import numpy as np

from realign.model.logprobs import HIDDEN_KEYS
from realign.train.batches import POLICY_LOGITS, preference_batches
from realign.train.loop import TrainConfig, token_stats
from realign.train.objectives import PreferenceLossConfig, preference_loss

NOT_MEASURED = {"reward_accuracy": math.nan, "reward_margin": math.nan, "kl": math.nan, "entropy": math.nan}


def split_pairs(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of n pairs: a seeded permutation, at least one held out when n > 1."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return order[n_val:], order[:n_val]


def split_with_reference(
    pairs: list[dict], ref: dict[str, np.ndarray], val_fraction: float, seed: int
) -> tuple[list[dict], list[dict], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train pairs, held-out pairs, their reference log-probs); `ref` holds arrays aligned with `pairs`. The
    reference's cached hidden states (HIDDEN_KEYS), when there, go with the training pairs only (for the per-step KL);
    the held-out check runs the reference itself."""
    tr, va = split_pairs(len(pairs), val_fraction, seed)
    keys = ("chosen_logps", "rejected_logps")
    train_keys = keys + tuple(k for k in HIDDEN_KEYS if k in ref)
    return (
        [pairs[i] for i in tr],
        [pairs[i] for i in va],
        {k: ref[k][tr] for k in train_keys},
        {k: ref[k][va] for k in keys},
    )


def held_out(
    model: nn.Module,
    tokenizer,
    loss_cfg: PreferenceLossConfig,
    train_cfg: TrainConfig,
    pairs: list[dict],
    ref: dict,
    reference: nn.Module | None = None,
) -> dict[str, float]:
    """Implicit-reward accuracy and margin (pair-weighted), KL and entropy (token-weighted) on held-out pairs.

    ref: the pairs' cached reference log-probs ("chosen_logps", "rejected_logps"); reference: a frozen
    model for KL under full fine-tuning (LoRA policies use their own base). No pairs: every value NaN.
    One policy forward per batch gives the rewards, KL and entropy.
    """
    if not pairs:
        return dict(NOT_MEASURED)
    fn = preference_loss(loss_cfg)
    # every held-out pair once, in the plain order (length grouping would reorder across batches)
    eval_cfg = train_cfg.model_copy(update={"batch_size": min(32, len(pairs)), "seed": 0, "group_by_length": False})
    source = preference_batches(tokenizer, pairs, eval_cfg, ref=ref)
    n_batches = -(-len(pairs) // eval_cfg.batch_size)
    acc = margin = kl = ent = 0.0
    weight = ktoks = 0.0
    for i in range(n_batches):
        batch = source(i)
        _, m = fn(model, batch)
        w = batch["tokens"].shape[0] / 2
        acc += m["rewards/accuracies"].item() * w
        margin += m["rewards/margins"].item() * w
        weight += w
        s = token_stats(model, batch, reference, m[POLICY_LOGITS])
        t = batch["mask"].sum().item()
        kl += s["kl"] * t
        ent += s["entropy"] * t
        ktoks += t
    return {"reward_accuracy": acc / weight, "reward_margin": margin / weight, "kl": kl / ktoks, "entropy": ent / ktoks}
