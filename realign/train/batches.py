"""Batch sources: micro-batch i -> token arrays, a pure function of i so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from realign.model.logprobs import _pad_id, collate, encode

if TYPE_CHECKING:  # loop.py imports this module
    from realign.train.loop import TrainConfig

Batch = dict[str, mx.array]  # "tokens" [B, T], "mask" [B, T-1], plus loss-specific arrays


def batch_indices(n_examples: int, batch_size: int, seed: int) -> Callable[[int], list[int]]:
    """Micro-batch i -> example indices: epochs of seeded permutations, so any step can be recomputed."""
    if n_examples < 1:
        raise ValueError("no training examples")

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
    order = batch_indices(len(encoded), cfg.batch_size, cfg.seed)
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
    order = batch_indices(len(pairs), cfg.batch_size, cfg.seed)
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
