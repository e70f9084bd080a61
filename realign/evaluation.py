"""Evaluating a model on verifiable held-out sets: accuracy, perplexity, win rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from realign.generate import GenerationConfig, generate
from realign.logprobs import mean_completion_loss


def positional_match(completion: str, answer: str) -> float:
    """Graded verifier score in [0, 1]: characters equal at the same position / the longer length.

    1.0 only for an exact match; a right-length answer with one wrong digit of five scores 0.8.
    """
    c, a = completion.strip(), answer.strip()
    if not c and not a:
        return 1.0
    return sum(x == y for x, y in zip(c, a)) / max(len(c), len(a))


def edit_similarity(completion: str, answer: str) -> float:
    """1 - Levenshtein distance / the longer length, in [0, 1]: a second, shift-tolerant graded judgement."""
    c, a = completion.strip(), answer.strip()
    if not c and not a:
        return 1.0
    prev = list(range(len(a) + 1))
    for i, x in enumerate(c, start=1):
        cur = [i]
        for j, y in enumerate(a, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return 1 - prev[-1] / max(len(c), len(a))


@dataclass
class AccuracyResult:
    accuracy: float          # exact-match fraction
    mean_score: float        # mean graded score
    predictions: list[str]


def accuracy(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, max_tokens: int = 12,
             batch_size: int = 64, grade: Callable[[str, str], float] = positional_match) -> AccuracyResult:
    """Greedy answers to every prompt; exact-match accuracy and mean graded score."""
    outs = generate(model, tokenizer, list(prompts), GenerationConfig(temperature=0.0, max_tokens=max_tokens, batch_size=batch_size))
    preds = [o[0].text for o in outs]
    exact = [p.strip() == a.strip() for p, a in zip(preds, answers)]
    scores = [grade(p, a) for p, a in zip(preds, answers)]
    return AccuracyResult(float(np.mean(exact)), float(np.mean(scores)), preds)


def perplexity(model, tokenizer, examples: Sequence[tuple[str, str]], batch_size: int = 32) -> float:
    """exp(mean per-token NLL) of the completions given their prompts (token-weighted over examples)."""
    losses = mean_completion_loss(model, tokenizer, [p for p, _ in examples], [c for _, c in examples], batch_size=batch_size)
    # mean_completion_loss is per example; weight by token count for a corpus perplexity
    from realign.logprobs import encode

    counts = np.array([encode(tokenizer, p, c).n_completion for p, c in examples], dtype=float)
    return float(math.exp(float((losses * counts).sum() / counts.sum())))


def win_rate(scores_new: Sequence[float], scores_old: Sequence[float]) -> float:
    """(wins + ties / 2) / items of the new model against the old one, by per-item scores."""
    n, o = np.asarray(scores_new, dtype=float), np.asarray(scores_old, dtype=float)
    return float((np.sum(n > o) + 0.5 * np.sum(n == o)) / len(n)) if len(n) else float("nan")
