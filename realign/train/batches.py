"""Batch sources: micro-batch i -> token arrays, a pure function of i so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from realign.model.logprobs import HIDDEN_KEYS, _pad_id, collate, encode

if TYPE_CHECKING:  # loop.py imports this module
    from realign.train.loop import TrainConfig

Batch = dict[str, mx.array]  # "tokens" [B, T], "mask" [B, T-1], plus loss-specific arrays
# A loss may add its policy logits [B, T-1, V] (stop-gradient) to its metrics under this key: the loop then measures
# entropy and KL from them instead of running the policy forward again. Never summed or logged as a metric.
POLICY_LOGITS = "policy_logits"
# A preference batch's scale for its chosen-token NLL term (RPO, ORPO, CPO): set on a data-parallel slice only.
NLL_WEIGHT = "nll_weight"
# The reference's final hidden states at each row's completion positions, packed to the front [B, C, d] (C: the
# batch's longest completion; zeros after a row's own), cached by stage 3: through the reference's output head they
# give its logits there, so the loop's per-step KL needs no reference forward.
REF_HIDDEN = "ref_hidden"


# Micro-batches per length group: enough that rows of similar length meet, few enough that a group spans a small
# slice of an epoch (HF Trainer's group_by_length uses 50 for the same reason).
LENGTH_GROUP = 32


def batch_indices(
    n_examples: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None
) -> Callable[[int], list[int]]:
    """Micro-batch i -> example indices: epochs of seeded permutations, so any step can be recomputed.

    lengths: each example's length. Then each epoch's permutation is cut into groups of LENGTH_GROUP micro-batches,
    each group sorted by length (longest first) and cut into micro-batches served in a seeded order: every example
    is drawn once per epoch, and a batch holds rows of similar length, so padding to its longest row wastes little
    (mlx-lm sorts its data by length; HF's group_by_length). An epoch's last batch may be short.
    """
    if n_examples < 1:
        raise ValueError("no training examples")
    flat = _permutation_stream(n_examples, batch_size, seed)
    if lengths is not None and len(lengths) != n_examples:
        raise ValueError(f"{len(lengths)} lengths for {n_examples} examples")
    if lengths is None or n_examples < 2 * batch_size:
        return flat
    group = batch_size * LENGTH_GROUP
    per_epoch = sum(-(-min(group, n_examples - g) // batch_size) for g in range(0, n_examples, group))

    def at(i: int) -> list[int]:
        epoch, j = divmod(i, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n_examples).tolist()
        batches = []
        for g in range(0, n_examples, group):  # groups never cross an epoch: no example twice in a batch
            idx = sorted(perm[g : g + group], key=lambda k: -lengths[k])  # stable: ties keep the permutation's order
            cut = [idx[b : b + batch_size] for b in range(0, len(idx), batch_size)]
            batches += [cut[o] for o in np.random.default_rng([seed, epoch, g, 1]).permutation(len(cut))]
        return batches[j]

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
    `realign.model.logprobs.reference_logps`); required for DPO, unused by ORPO/CPO. When it also holds the
    reference's hidden states at the completion positions (HIDDEN_KEYS), batches carry them as REF_HIDDEN, and the
    loop's per-step KL needs no reference forward.
    """
    chosen = [encode(tokenizer, p["prompt"], p["chosen"], chat=chat, max_len=cfg.max_seq_len) for p in pairs]
    rejected = [encode(tokenizer, p["prompt"], p["rejected"], chat=chat, max_len=cfg.max_seq_len) for p in pairs]
    # a pair's length is its longer row's: both rows share the batch
    lengths = [max(len(c.ids), len(r.ids)) for c, r in zip(chosen, rejected)] if cfg.group_by_length else None
    order = batch_indices(len(pairs), cfg.batch_size, cfg.seed, lengths)
    pad = _pad_id(tokenizer)
    cached = ref is not None and all(k in ref for k in HIDDEN_KEYS)
    d = _check_hidden(ref, chosen, rejected) if cached else 0

    def at(i: int) -> Batch:
        idx = order(i)
        tb = collate([chosen[j] for j in idx] + [rejected[j] for j in idx], pad_id=pad)
        batch = {"tokens": tb.tokens, "mask": tb.mask}
        if ref is not None:
            batch["ref_chosen"] = mx.array(np.asarray(ref["chosen_logps"])[idx], dtype=mx.float32)
            batch["ref_rejected"] = mx.array(np.asarray(ref["rejected_logps"])[idx], dtype=mx.float32)
        if cached:
            rows = [("chosen", j) for j in idx] + [("rejected", j) for j in idx]
            batch[REF_HIDDEN] = _place_hidden(ref, rows, np.array(tb.mask), d)
        return batch

    return at


def _check_hidden(ref: dict, chosen: list, rejected: list) -> int:
    """d of the cached hidden states, after checking that they cover each row's completion tokens as training encodes
    them (a cache made with another max_seq_len would hold states of other tokens)."""
    first = next((j for j, e in enumerate(chosen) if e.n_completion), 0)
    d = len(ref["chosen_ref_hidden"][first]) // max(chosen[first].n_completion, 1)
    for side, encoded in (("chosen", chosen), ("rejected", rejected)):
        name = f"{side}_ref_hidden"
        for j, e in enumerate(encoded):
            if d < 1 or len(ref[name][j]) != d * e.n_completion:
                raise ValueError(
                    f"reference cache {name}[{j}] has {len(ref[name][j])} numbers, expected {e.n_completion} "
                    f"completion tokens x d={d} (the size pair {first} gives): it was made for other rows (another "
                    "max_seq_len than training's); run the reference stage (stage 3) again"
                )
    return d


def _place_hidden(ref: dict, rows: list[tuple[str, int]], mask: np.ndarray, d: int) -> mx.array:
    """[rows, C, d]: each row's cached reference hidden states, its completion positions in order from the front
    (C = the longest completion among the rows), zeros after: a quarter of [rows, T-1, d] on the demo's batches."""
    counts = (mask > 0).sum(axis=1)
    out = np.zeros((len(rows), max(int(counts.max()), 1), d), dtype=np.float32)
    for r, (side, j) in enumerate(rows):
        out[r, : counts[r]] = np.asarray(ref[f"{side}_ref_hidden"][j], dtype=np.float32).reshape(counts[r], d)
    return mx.array(out)
