"""Evaluating a model on verifiable held-out sets: accuracy, perplexity, win rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from realign.model.generate import GenerationConfig, generate
from realign.model.logprobs import encode, mean_completion_loss
from realign.score.verifiers import positional_match


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
    counts = np.array([encode(tokenizer, p, c).n_completion for p, c in examples], dtype=float)
    return float(math.exp(float((losses * counts).sum() / counts.sum())))


def win_rate(scores_new: Sequence[float], scores_old: Sequence[float]) -> float:
    """(wins + ties / 2) / items of the new model against the old one, by per-item scores."""
    n, o = np.asarray(scores_new, dtype=float), np.asarray(scores_old, dtype=float)
    return float((np.sum(n > o) + 0.5 * np.sum(n == o)) / len(n)) if len(n) else float("nan")
