"""Alignment metrics, computed from real distributions, scores and texts.

Per-token metrics (KL, entropy) are token-weighted means over completion tokens:
every completion token in the batch counts once, prompt and padding never.
Units: nats for KL, entropy and losses; fractions in [0, 1] for rates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

# --- distributions -----------------------------------------------------------------


def token_kl(policy_logits: mx.array, ref_logits: mx.array) -> mx.array:
    """KL(policy || reference) per position over the full vocabulary: [..., V] -> [...] (nats)."""
    lp = policy_logits.astype(mx.float32)
    lq = ref_logits.astype(mx.float32)
    lp = lp - mx.logsumexp(lp, axis=-1, keepdims=True)
    lq = lq - mx.logsumexp(lq, axis=-1, keepdims=True)
    return (mx.exp(lp) * (lp - lq)).sum(axis=-1)


def token_entropy(logits: mx.array) -> mx.array:
    """Entropy of the next-token distribution per position: [..., V] -> [...] (nats)."""
    lp = logits.astype(mx.float32)
    lp = lp - mx.logsumexp(lp, axis=-1, keepdims=True)
    return -(mx.exp(lp) * lp).sum(axis=-1)


def masked_mean(values: mx.array, mask: mx.array) -> float:
    """Mean of `values` where mask == 1; NaN when the mask is empty (nothing to average)."""
    n = float(mask.sum().item())
    return float((values * mask).sum().item()) / n if n else float("nan")


def mean_kl(policy_logits: mx.array, ref_logits: mx.array, mask: mx.array) -> float:
    """Mean per-token KL(policy || reference) over masked (completion) positions."""
    return masked_mean(token_kl(policy_logits, ref_logits), mask)


def mean_entropy(logits: mx.array, mask: mx.array) -> float:
    """Mean per-token policy entropy over masked (completion) positions."""
    return masked_mean(token_entropy(logits), mask)


def masked_kl_and_entropy(policy_logits: mx.array, ref_logits: mx.array | None, mask: mx.array) -> tuple[float, float]:
    """(mean per-token KL(policy || reference), mean policy entropy) over masked positions: mean_kl and mean_entropy
    in one pass over those positions only, sharing the policy's log-softmax and its exp. Completions are often a
    quarter of a batch's positions, and the full-vocabulary exp dominates the cost on a CPU. KL is NaN without
    reference logits; both are NaN for an empty mask."""
    idx = masked_rows(mask)
    if idx is None:
        return float("nan"), float("nan")
    vocab = policy_logits.shape[-1]
    ref_rows = None if ref_logits is None else ref_logits.reshape(-1, vocab)[idx]
    return kl_and_entropy_rows(policy_logits.reshape(-1, vocab)[idx], ref_rows)


def masked_rows(mask: mx.array) -> mx.array | None:
    """Indices of the masked positions in a [B, T] mask flattened to B * T rows; None when there are none."""
    rows = np.flatnonzero(np.asarray(mask).reshape(-1) > 0)
    return mx.array(rows) if len(rows) else None


def kl_and_entropy_rows(policy_logits: mx.array, ref_logits: mx.array | None) -> tuple[float, float]:
    """(mean KL(policy || reference), mean policy entropy) over rows of logits [N, V] (NaN KL without a reference)."""
    if mx.default_device() == mx.cpu:
        # The full-vocabulary exps are most of this, and MLX's CPU exp costs ~24 ns an element here against numpy's
        # ~2 (SIMD): on a CPU they run in numpy (the same quantities, to float32 rounding); on a GPU in MLX.
        return _kl_and_entropy_numpy(policy_logits, ref_logits)
    return _kl_and_entropy_mlx(policy_logits, ref_logits)


def _kl_and_entropy_mlx(policy_logits: mx.array, ref_logits: mx.array | None) -> tuple[float, float]:
    """kl_and_entropy_rows in MLX."""
    # One exp for the policy's log-softmax and its probabilities (logsumexp then exp(lp) would take two).
    x = policy_logits.astype(mx.float32)
    x = x - x.max(axis=-1, keepdims=True)
    e = mx.exp(x)
    total = e.sum(axis=-1, keepdims=True)
    lp, p = x - mx.log(total), e / total
    entropy = -(p * lp).sum(axis=-1).mean()
    if ref_logits is None:
        return float("nan"), entropy.item()
    lq = ref_logits.astype(mx.float32)
    lq = lq - mx.logsumexp(lq, axis=-1, keepdims=True)
    kl = (p * (lp - lq)).sum(axis=-1).mean()
    mx.eval(kl, entropy)
    return kl.item(), entropy.item()


def _kl_and_entropy_numpy(policy_logits: mx.array, ref_logits: mx.array | None) -> tuple[float, float]:
    """kl_and_entropy_rows in numpy. With x and y the rows' logits shifted by their maxima, Z = sum(exp x) and
    p = exp(x) / Z: H(p) = log Z - E_p[x] and KL(p || q) = E_p[x - y] - log Z + log sum(exp y), which are
    -sum p log p and sum p (log p - log q) without materialising either log-softmax."""
    x = np.array(policy_logits.astype(mx.float32))  # a writable copy
    x -= x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    z = e.sum(axis=-1)
    log_z = np.log(z)
    entropy = float(np.mean(log_z - np.einsum("ij,ij->i", e, x) / z))
    if ref_logits is None:
        return float("nan"), entropy
    y = np.array(ref_logits.astype(mx.float32))
    y -= y.max(axis=-1, keepdims=True)
    log_zq = np.log(np.exp(y).sum(axis=-1))
    x -= y  # x - y, in place: x is not needed any more
    kl = float(np.mean(np.einsum("ij,ij->i", e, x) / z - log_z + log_zq))
    return kl, entropy


# --- preferences -------------------------------------------------------------------


def reward_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> float:
    """Fraction of pairs with reward(chosen) > reward(rejected); ties count as wrong. NaN for no pairs."""
    c, r = np.asarray(chosen_rewards, dtype=float), np.asarray(rejected_rewards, dtype=float)
    return float(np.mean(c > r)) if len(c) else float("nan")


def preference_gap(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Mean of score(chosen) - score(rejected), scores on a 0-1 scale. NaN for no pairs."""
    c, r = np.asarray(chosen_scores, dtype=float), np.asarray(rejected_scores, dtype=float)
    if len(c) and (c.min() < 0 or c.max() > 1 or r.min() < 0 or r.max() > 1):
        raise ValueError("scores must be in [0, 1]")
    return float(np.mean(c - r)) if len(c) else float("nan")


def winner(score_a: float, score_b: float) -> int:
    """+1 if a wins, -1 if b wins, 0 for a tie."""
    return int(np.sign(score_a - score_b))


def agreement_rate(first: Sequence[int], second: Sequence[int]) -> float:
    """Fraction of pairs where two independent judgements name the same winner (+1 / -1 / 0 tie).

    A tie in one judgement and a win in the other is a disagreement. NaN for no pairs.
    """
    if len(first) != len(second):
        raise ValueError(f"judgements differ in length: {len(first)} vs {len(second)}")
    return float(np.mean(np.asarray(first) == np.asarray(second))) if len(first) else float("nan")


# --- data hygiene ------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens used for n-gram overlap."""
    return _WORD.findall(text.lower())


@dataclass
class DecontaminationReport:
    """score = 1 - contaminated / items; contaminated: indices of eval items that overlap training data."""

    score: float
    n_items: int
    contaminated: list[int] = field(default_factory=list)
    ngram: int = 13
    short_items: int = 0  # items with fewer than `ngram` words, checked with their full length


def decontamination(train_texts: Iterable[str], eval_texts: Sequence[str], n: int = 13) -> DecontaminationReport:
    """1 - the fraction of evaluation items that share an n-gram of words with the training texts.

    An item shorter than n words is contaminated when all of it appears as a
    contiguous run of words in a training text (its own length is the n-gram).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    eval_words = [words(t) for t in eval_texts]
    needed = sorted({min(n, len(w)) for w in eval_words if w})
    train_grams: dict[int, set[tuple[str, ...]]] = {k: set() for k in needed}
    for text in train_texts:
        w = words(text)
        for k in needed:
            train_grams[k].update(tuple(w[i : i + k]) for i in range(len(w) - k + 1))
    bad = []
    for idx, w in enumerate(eval_words):
        if not w:
            continue
        k = min(n, len(w))
        if any(tuple(w[i : i + k]) in train_grams[k] for i in range(len(w) - k + 1)):
            bad.append(idx)
    total = len(eval_texts)
    return DecontaminationReport(
        score=1 - len(bad) / total if total else float("nan"),
        n_items=total,
        contaminated=bad,
        ngram=n,
        short_items=sum(1 for w in eval_words if 0 < len(w) < n),
    )


def ifd_score(loss_given_question: float, loss_alone: float) -> float:
    """Instruction-following difficulty: loss(answer | question) / loss(answer). NaN if loss(answer) is 0."""
    return loss_given_question / loss_alone if loss_alone > 0 else float("nan")


# --- capability ----------------------------------------------------------------------


def exact_match_accuracy(
    predictions: Sequence[str], references: Sequence[str], verifier: Callable[[str, str], bool] | None = None
) -> float:
    """Fraction of predictions the verifier accepts (default: whitespace-trimmed equality). NaN if empty."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    check = verifier or (lambda p, r: p.strip() == r.strip())
    return float(np.mean([bool(check(p, r)) for p, r in zip(predictions, references)])) if predictions else float("nan")


@dataclass
class RetentionReport:
    """Per-benchmark after/before ratios; `retention` is their mean over benchmarks it could be computed for."""

    retention: float
    per_benchmark: dict[str, float]
    not_computed: dict[str, str]


def capability_retention(before: Mapping[str, float], after: Mapping[str, float]) -> RetentionReport:
    """score after / score before per benchmark (higher-is-better scores).

    A benchmark whose baseline is 0 or missing has no ratio; it is listed in
    `not_computed` with the reason instead of being guessed.
    """
    ratios, skipped = {}, {}
    for name, b in before.items():
        if name not in after:
            skipped[name] = "no score after training"
        elif b is None or (isinstance(b, float) and math.isnan(b)):
            skipped[name] = "no baseline score"
        elif b <= 0:
            skipped[name] = f"baseline is {b}: a ratio is undefined"
        else:
            ratios[name] = after[name] / b
    return RetentionReport(float(np.mean(list(ratios.values()))) if ratios else float("nan"), ratios, skipped)


def calibration_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[dict]:
    """Equal-width bins over [0, 1]: bin b holds confidences in (b/n, (b+1)/n], bin 0 also holds 0 exactly (and
    values outside [0, 1] are clipped into the end bins). Per non-empty bin: its range, count, share of all items,
    mean confidence and accuracy."""
    conf = np.clip(np.asarray(confidences, dtype=float), 0.0, 1.0)
    corr = np.asarray(correct, dtype=float)
    if conf.shape != corr.shape:
        raise ValueError(f"{len(conf)} confidences for {len(corr)} outcomes")
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            out.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(sel.sum()),
                    "share": float(sel.mean()),
                    "confidence": float(conf[sel].mean()),
                    "accuracy": float(corr[sel].mean()),
                }
            )
    return out


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    """ECE (Guo et al. 2017): sum over equal-width bins of (bin share) * |bin accuracy - bin mean confidence|;
    bins as `calibration_bins`. NaN for no items."""
    if not len(confidences):
        return float("nan")
    return float(
        sum(b["share"] * abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(confidences, correct, n_bins))
    )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's r of the average ranks, so ties are handled), over the pairs where
    both are finite; NaN with fewer than two such pairs or when either side is constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def grouped_spearman(groups: Sequence, a: Sequence[float], b: Sequence[float]) -> tuple[float, int]:
    """(mean Spearman over groups, number of groups it is defined for): the rank agreement *within* each group (one
    prompt's samples), which is what group-normalised RL (GRPO) uses; groups where it is undefined (fewer than two
    finite pairs, a constant side) are left out. NaN when no group has one."""
    by: dict = {}
    for g, x, y in zip(groups, a, b, strict=True):
        by.setdefault(g, ([], []))
        by[g][0].append(x)
        by[g][1].append(y)
    rhos = [r for xs, ys in by.values() if not math.isnan(r := spearman(xs, ys))]
    return (float(np.mean(rhos)) if rhos else float("nan")), len(rhos)
