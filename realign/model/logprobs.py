"""Tokenizing (prompt, completion) examples, padding them into batches, and log-probs of completions.

Only completion tokens count: prompt and padding positions are masked out of
every log-prob, loss and per-token metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from realign.model.generate import prompt_tokens


def bucket_length(n: int) -> int:
    """`n` rounded up to one of 16 lengths per doubling (..., 32, 34, ..., 62, 64, 68, ..., 124, 128, 136, ...):
    rounding adds at most 1/16 padding, and a compiled step sees at most 16 shapes per doubling of the length
    (lengths up to 32 are kept exact). A fixed multiple of 16 padded the demo's 20-27-token rows to 32, a quarter
    of every pass; 8 lengths per doubling left 11.7% of the demo's DPO positions padding, 16 leave 9.6% (6 shapes
    over its 120 batches, measured by bench/startup.py --demo)."""
    if n <= 32:
        return n
    step = 1 << (n.bit_length() - 5)  # 2^floor(log2 n) / 16
    return -(-n // step) * step


@dataclass
class Encoded:
    """One tokenized example: ids = prompt + completion (+ stop token); n_prompt prompt tokens."""

    ids: list[int]
    n_prompt: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.n_prompt


def encode(tokenizer, prompt, completion: str, *, chat: bool = True, max_len: int = 512) -> Encoded:
    """Tokenize prompt and completion separately (no merge across the boundary), append the stop token.

    Over `max_len`, the completion is cut at its end first, then the prompt from its left.
    """
    p = prompt_tokens(tokenizer, prompt, chat)
    c = list(tokenizer.encode(completion, add_special_tokens=False))
    eos = tokenizer.eos_token_id
    if eos is not None:
        c.append(eos)  # the model must learn to stop
    if len(p) + len(c) > max_len:
        c = c[: max(1, max_len - len(p))]
        p = p[-(max_len - len(c)) :]
    return Encoded(p + c, len(p))


@dataclass
class TokenBatch:
    """Padded token ids [B, T] and completion mask [B, T-1] (mask[b, t] = 1 when ids[b, t+1] is a completion token)."""

    tokens: mx.array
    mask: mx.array

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum().item())


def collate(examples: Sequence[Encoded], pad_id: int = 0) -> TokenBatch:
    """Right-pad examples into one batch, to the longest row's bucket_length."""
    T = bucket_length(max(len(e.ids) for e in examples))
    tokens = np.full((len(examples), T), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), T - 1), dtype=np.float32)
    for b, e in enumerate(examples):
        tokens[b, : len(e.ids)] = e.ids
        mask[b, e.n_prompt - 1 : len(e.ids) - 1] = 1.0  # position t predicts token t+1
    return TokenBatch(mx.array(tokens), mx.array(mask))


def token_logps_from_logits(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position: logits [B, T, V], targets [B, T] -> [B, T] (float32)."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


def forward_logps(model, batch: TokenBatch) -> tuple[mx.array, mx.array]:
    """(per-token log-probs of the next tokens [B, T-1], logits [B, T-1, V]) for a batch."""
    logits = model(batch.tokens[:, :-1])
    return token_logps_from_logits(logits, batch.tokens[:, 1:]), logits


def sequence_logps(model, batch: TokenBatch) -> tuple[mx.array, mx.array]:
    """(sum of completion-token log-probs [B], number of completion tokens [B]), prompt and padding masked."""
    lp, _ = forward_logps(model, batch)
    return (lp * batch.mask).sum(axis=1), batch.mask.sum(axis=1)


def pair_batch(tokenizer, pairs: Sequence[dict], *, chat: bool = True, max_len: int = 512) -> TokenBatch:
    """Chosen then rejected for each pair in one batch of 2B rows (one forward pass scores both)."""
    chosen = [encode(tokenizer, p["prompt"], p["chosen"], chat=chat, max_len=max_len) for p in pairs]
    rejected = [encode(tokenizer, p["prompt"], p["rejected"], chat=chat, max_len=max_len) for p in pairs]
    return collate(chosen + rejected, pad_id=_pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    return int(pid) if pid is not None else int(tokenizer.eos_token_id or 0)


HIDDEN_KEYS = ("chosen_ref_hidden", "rejected_ref_hidden")


def output_head(model) -> Callable[[mx.array], mx.array]:
    """The map from the backbone's final (normed) hidden states to logits, for mlx-lm's decoder layout: `model.model`
    is the backbone and the logits are its output through `lm_head`, or the tied input embedding (tied models have
    no lm_head, whether the flag sits on `args` or on the model). hidden_cache_problem checks the result."""
    tied = getattr(model, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(model, "args", None), "tie_word_embeddings", False)
    if not tied and "lm_head" in model:
        return model.lm_head
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if embed is not None and hasattr(embed, "as_linear"):
        return embed.as_linear
    raise ValueError(f"{type(model).__module__}.{type(model).__name__} has no lm_head or embedding to project with")


def hidden_cache_problem(model, tokens: mx.array) -> str | None:
    """Why the model's logits cannot be had from its backbone's hidden states through output_head (None if they
    can): checked on one row of up to 64 tokens. Architectures that scale or soft-cap after the head (Gemma 2,
    Cohere, Granite) or scale before it (MiniCPM) fail here, and their per-step KL takes the reference forward."""
    inputs = tokens[:1, :64]
    try:
        split = output_head(model)(model.model(inputs)).astype(mx.float32)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"no backbone + output head split ({exc})"
    own = model(inputs).astype(mx.float32)
    diff, scale = mx.abs(own - split).max().item(), mx.abs(own).max().item()
    if not diff <= 1e-3 * (1.0 + scale):
        return f"its logits differ from its head over its hidden states by up to {diff:.3g} (logits up to {scale:.3g})"
    return None


def reference_logps(
    model,
    tokenizer,
    pairs: Sequence[dict],
    *,
    batch_size: int = 16,
    chat: bool = True,
    max_len: int = 512,
    hidden: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Reference log-probs of every pair, computed once so the reference model can leave memory.

    Returns float64 arrays: chosen_logps, rejected_logps (sums over completion tokens)
    and chosen_tokens, rejected_tokens (counts), each [len(pairs)].
    hidden adds HIDDEN_KEYS: per pair, the reference's final hidden state at each completion position, [n_completion
    * d] float32 flattened row by row (object arrays of len(pairs)). Through the reference's output head they give
    its next-token distribution at those positions (up to rounding: float32 states, the head in the model's dtype):
    training measures KL(policy || reference) per step from them without running the reference over every position
    (realign.train.loop.token_stats). A model whose logits are not its head over its hidden states is refused
    (hidden_cache_problem; stage 3 checks first and then does without).
    """
    out = {k: np.zeros(len(pairs)) for k in ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens")}
    if hidden:
        out.update({k: np.empty(len(pairs), dtype=object) for k in HIDDEN_KEYS})
        head = output_head(model)
        problem = hidden_cache_problem(model, pair_batch(tokenizer, pairs[:1], chat=chat, max_len=max_len).tokens)
        if problem:
            raise ValueError(f"the reference's hidden states cannot stand in for its logits: {problem}")
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = pair_batch(tokenizer, chunk, chat=chat, max_len=max_len)
        n = len(chunk)
        if hidden:
            inputs = batch.tokens[:, :-1]
            h = model.model(inputs)
            lp = token_logps_from_logits(head(h), batch.tokens[:, 1:])
            sums, counts = (lp * batch.mask).sum(axis=1), batch.mask.sum(axis=1)
            mask = np.array(batch.mask)
            # only the completion positions leave MLX (as training's batches have them), in row-major order
            at = np.flatnonzero(mask.reshape(-1) > 0)
            kept = h.reshape(-1, h.shape[-1])[mx.array(at)].astype(mx.float32)
            mx.eval(sums, counts, kept)
            kept, ends = np.array(kept), np.cumsum(mask.sum(axis=1).astype(int))
            for r in range(2 * n):
                side = "chosen" if r < n else "rejected"
                out[f"{side}_ref_hidden"][start + r % n] = kept[ends[r] - int(mask[r].sum()) : ends[r]].reshape(-1)
        else:
            sums, counts = sequence_logps(model, batch)
            mx.eval(sums, counts)
        sums, counts = np.array(sums), np.array(counts)
        out["chosen_logps"][start : start + n] = sums[:n]
        out["rejected_logps"][start : start + n] = sums[n:]
        out["chosen_tokens"][start : start + n] = counts[:n]
        out["rejected_tokens"][start : start + n] = counts[n:]
        if on_progress:
            on_progress(start + n, len(pairs))
    return out


def hidden_cache_bytes(model, tokenizer, pairs: Sequence[dict], *, chat: bool = True, max_len: int = 512) -> int:
    """Bytes the HIDDEN_KEYS of reference_logps(hidden=True) take for these pairs: completion tokens x d x 4."""
    d = _hidden_size(model)
    n = 0
    for p in pairs:
        for side in ("chosen", "rejected"):
            n += encode(tokenizer, p["prompt"], p[side], chat=chat, max_len=max_len).n_completion
    return n * d * 4


def _hidden_size(model) -> int:
    args = getattr(model, "args", None)
    d = getattr(args, "hidden_size", None)
    if d is None:
        d = model.model(mx.array([[0]])).shape[-1]  # no config field: measure it
    return int(d)


def mean_completion_loss(
    model,
    tokenizer,
    prompts: Sequence,
    completions: Sequence[str],
    *,
    chat: bool = True,
    batch_size: int = 16,
    max_len: int = 512,
) -> np.ndarray:
    """Mean token cross-entropy (nats) of each completion given its prompt; prompt None means no prompt.

    With prompt None the completion is scored on its own, after the model's first
    token (so it is conditioned on nothing but itself), as IFD's "loss(answer)" needs.
    """
    losses = np.zeros(len(completions))
    for start in range(0, len(completions), batch_size):
        encs = []
        for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            if p is None:
                ids = list(tokenizer.encode(c, add_special_tokens=False))
                eos = tokenizer.eos_token_id
                if eos is not None:
                    ids.append(eos)
                encs.append(Encoded(ids[:max_len], 1))  # first token has no context to be predicted from
            else:
                encs.append(encode(tokenizer, p, c, chat=chat, max_len=max_len))
        batch = collate(encs, pad_id=_pad_id(tokenizer))
        sums, counts = sequence_logps(model, batch)
        mx.eval(sums, counts)
        losses[start : start + len(encs)] = -np.array(sums) / np.maximum(np.array(counts), 1)
    return losses


def finite_fraction(cache: dict[str, np.ndarray]) -> float:
    """Share of finite values among a reference cache's chosen and rejected log-probs (NaN when empty)."""
    values = np.concatenate([cache["chosen_logps"], cache["rejected_logps"]])
    return float(np.isfinite(values).mean()) if len(values) else float("nan")
