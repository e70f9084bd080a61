"""Batch sources: micro-batch i -> token arrays, a pure function of i so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from realign.model.logprobs import _pad_id, collate, encode

if TYPE_CHECKING:  # loop.py imports this module
    from realign.train.loop import TrainConfig

Batch = dict[str, mx.array]  # "tokens" [B, T], "mask" [B, T-1], plus loss-specific arrays


# Micro-batches per length group: enough that rows of similar length meet, few enough that a group spans a small
# slice of an epoch (HF Trainer's group_by_length uses 50 for the same reason).
LENGTH_GROUP = 32


def batch_indices(
    n_examples: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None
) -> Callable[[int], list[int]]:
    """Micro-batch i -> example indices: epochs of seeded permutations, so any step can be recomputed.

    lengths: each example's length. Then the indices of LENGTH_GROUP micro-batches (at most an epoch's) are sorted
    by length (longest first), cut into micro-batches and those are served in a seeded order: every example is
    still drawn once per epoch in the same random order at the group's scale, but a batch holds rows of similar
    length, so padding to its longest row wastes little (mlx-lm sorts its data by length; HF's group_by_length).
    """
    if n_examples < 1:
        raise ValueError("no training examples")
    flat = _permutation_stream(n_examples, batch_size, seed)
    if lengths is not None and len(lengths) != n_examples:
        raise ValueError(f"{len(lengths)} lengths for {n_examples} examples")
    # A group never holds more than an epoch, so sorting cannot put copies of one example into one batch.
    size = min(LENGTH_GROUP, n_examples // batch_size)
    if lengths is None or size < 2:
        return flat
    group = _permutation_stream(n_examples, batch_size * size, seed)

    def at(i: int) -> list[int]:
        g, k = divmod(i, size)
        idx = sorted(group(g), key=lambda j: -lengths[j])  # stable: ties keep the permutation's order
        batches = [idx[b * batch_size : (b + 1) * batch_size] for b in range(size)]
        return batches[np.random.default_rng([seed, g, 1]).permutation(size)[k]]

    return at


def _permutation_stream(n_examples: int, batch_size: int, seed: int) -> Callable[[int], list[int]]:
    """Chunk i of `batch_size` indices from the concatenated seeded permutations of 0..n-1 (one per epoch)."""

    def at(i: int) -> list[int]:
        out = []
        pos = i * batch_size
        while len(out) < batch_size:
            epoch, offset = divmod(pos, n_examples)
            perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
            take = min(batch_size - len(out), n_examples - offset)
            out.extend(perm[offset : offset + take].tolist())
            pos += take
        return out

    return at


def sft_batches(tokenizer, examples: list[tuple], cfg: TrainConfig, *, chat: bool = True) -> Callable[[int], Batch]:
    """Micro-batch source over (prompt, completion) examples, tokenized once."""
    encoded = [encode(tokenizer, p, c, chat=chat, max_len=cfg.max_seq_len) for p, c in examples]
    lengths = [len(e.ids) for e in encoded] if cfg.group_by_length else None
    order = batch_indices(len(encoded), cfg.batch_size, cfg.seed, lengths)
    pad = _pad_id(tokenizer)

    def at(i: int) -> Batch:
        tb = collate([encoded[j] for j in order(i)], pad_id=pad)
        return {"tokens": tb.tokens, "mask": tb.mask}

    return at


def preference_batches(
    tokenizer, pairs: list[dict], cfg: TrainConfig, *, ref: dict | None = None, chat: bool = True
) -> Callable[[int], Batch]:
    """Micro-batch source over preference pairs: chosen rows then rejected rows, plus cached reference log-probs.

    ref: arrays "chosen_logps" and "rejected_logps" aligned with `pairs` (from
    `realign.model.logprobs.reference_logps`); required for DPO, unused by ORPO/CPO.
    """
    chosen = [encode(tokenizer, p["prompt"], p["chosen"], chat=chat, max_len=cfg.max_seq_len) for p in pairs]
    rejected = [encode(tokenizer, p["prompt"], p["rejected"], chat=chat, max_len=cfg.max_seq_len) for p in pairs]
    # a pair's length is its longer row's: both rows share the batch
    lengths = [max(len(c.ids), len(r.ids)) for c, r in zip(chosen, rejected)] if cfg.group_by_length else None
    order = batch_indices(len(pairs), cfg.batch_size, cfg.seed, lengths)
    pad = _pad_id(tokenizer)

    def at(i: int) -> Batch:
        idx = order(i)
        tb = collate([chosen[j] for j in idx] + [rejected[j] for j in idx], pad_id=pad)
        batch = {"tokens": tb.tokens, "mask": tb.mask}
        if ref is not None:
            batch["ref_chosen"] = mx.array(np.asarray(ref["chosen_logps"])[idx], dtype=mx.float32)
            batch["ref_rejected"] = mx.array(np.asarray(ref["rejected_logps"])[idx], dtype=mx.float32)
        return batch

    return at
