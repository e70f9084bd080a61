"""Probes of a model: accuracy on verifiable held-out sets (the sweep every stage uses), perplexity, win rate,
and KL(policy || reference) on a fixed set of texts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from realign.data.datasets import LETTERS
from realign.eval.benchmarks import MATH_MAX_TOKENS, choice_loglikelihoods, numbers_match, pick
from realign.eval.metrics import mean_entropy, mean_kl
from realign.model.generate import GenerationConfig, generate
from realign.model.logprobs import _pad_id, collate, encode, mean_completion_loss
from realign.score.verifiers import positional_match


@dataclass
class AccuracyResult:
    accuracy: float  # exact-match fraction
    mean_score: float  # mean graded score
    predictions: list[str]
    exact: list[bool]  # per item, for paired comparisons
    scores: list[float]  # per item graded score


def accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    max_tokens: int = 12,
    batch_size: int = 64,
    grade: Callable[[str, str], float] = positional_match,
    is_correct: Callable[[str, str], bool] | None = None,
) -> AccuracyResult:
    """Greedy answers to every prompt; accuracy (exact match, or `is_correct(prediction, answer)`: a verifier) and
    mean graded score."""
    outs = generate(
        model, tokenizer, list(prompts), GenerationConfig(temperature=0.0, max_tokens=max_tokens, batch_size=batch_size)
    )
    preds = [o[0].text for o in outs]
    exact = [is_correct(p, a) if is_correct else p.strip() == a.strip() for p, a in zip(preds, answers)]
    scores = [grade(p, a) for p, a in zip(preds, answers)]
    return AccuracyResult(float(np.mean(exact)), float(np.mean(scores)), preds, exact, scores)


def perplexity(model, tokenizer, examples: Sequence[tuple[str, str]], batch_size: int = 32) -> float:
    """exp(mean per-token NLL) of the completions given their prompts (token-weighted over examples)."""
    losses = mean_completion_loss(
        model, tokenizer, [p for p, _ in examples], [c for _, c in examples], batch_size=batch_size
    )
    # mean_completion_loss is per example; weight by token count for a corpus perplexity
    counts = np.array([encode(tokenizer, p, c).n_completion for p, c in examples], dtype=float)
    return float(math.exp(float((losses * counts).sum() / counts.sum())))


def win_rate(scores_new: Sequence[float], scores_old: Sequence[float]) -> float:
    """(wins + ties / 2) / items of the new model against the old one, by per-item scores."""
    n, o = np.asarray(scores_new, dtype=float), np.asarray(scores_old, dtype=float)
    return float((np.sum(n > o) + 0.5 * np.sum(n == o)) / len(n)) if len(n) else float("nan")


def choice_accuracy(
    model, tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]], labels: Sequence[int], **kw
) -> AccuracyResult:
    """Multiple choice by log-likelihood (realign.eval.benchmarks): the prediction is the letter of the option the
    model finds likeliest, exact whether it is the right one, the score the right option's probability among the
    options. kw: choice_loglikelihoods' chat, batch_size, max_len."""
    lls = choice_loglikelihoods(model, tokenizer, prompts, [len(c) for c in choices], **kw)
    picked, exact, scores = pick(lls, labels)
    preds = [LETTERS[i] for i in picked]
    mean = float(np.mean(scores)) if scores else float("nan")
    return AccuracyResult(float(np.mean(exact)) if exact else float("nan"), mean, preds, exact, scores)


def score_eval_sets(
    model, tokenizer, eval_sets: Sequence, *, max_tokens: int = 12, is_correct: Callable[[str, str], bool] | None = None
) -> dict[str, AccuracyResult]:
    """Accuracy of `model` on each evaluation set (EvalItems), by set name, as its format says:
    qa: greedy answers judged by exact match, or by `is_correct(prediction, answer)` (a verifier);
    choice: the likeliest option's letter (log-likelihood, no generation); math: greedy answers whose last number
    equals the reference (`is_correct` does not apply), with at least MATH_MAX_TOKENS tokens to work it out.
    A set's own max_tokens overrides the budget."""
    out: dict[str, AccuracyResult] = {}
    for ev in eval_sets:
        fmt = getattr(ev, "format", "qa")
        own = getattr(ev, "max_tokens", None)
        if fmt == "choice":
            out[ev.name] = choice_accuracy(model, tokenizer, ev.prompts, ev.choices, ev.labels)
        elif fmt == "math":
            budget = own or max(max_tokens, MATH_MAX_TOKENS)
            out[ev.name] = accuracy(
                model,
                tokenizer,
                ev.prompts,
                ev.answers,
                max_tokens=budget,
                is_correct=numbers_match,
                grade=lambda p, a: float(numbers_match(p, a)),  # a worked answer is not graded by its characters
            )
        else:
            out[ev.name] = accuracy(
                model, tokenizer, ev.prompts, ev.answers, max_tokens=own or max_tokens, is_correct=is_correct
            )
    return out


def eval_metrics(results: dict[str, AccuracyResult]) -> dict[str, float]:
    """{NAME_accuracy, NAME_score} per set: the metric names the gates, retention and the summary use."""
    out: dict[str, float] = {}
    for name, r in results.items():
        out[f"{name}_accuracy"], out[f"{name}_score"] = r.accuracy, r.mean_score
    return out


def probe_examples(pairs: Sequence[dict], limit: int = 64) -> list[tuple[str, str]]:
    """A fixed KL probe from preference rows: the first `limit` prompts with their chosen, then their rejected one."""
    head = list(pairs)[:limit]
    return [(r["prompt"], r["chosen"]) for r in head] + [(r["prompt"], r["rejected"]) for r in head]


def kl_probe(model, reference, tokenizer, examples: Sequence[tuple[str, str]]) -> float:
    """Mean per-token KL(model || reference) over the completion tokens of `examples` (NaN when there are none)."""
    if not examples:
        return math.nan
    batch = collate([encode(tokenizer, p, c) for p, c in examples], pad_id=_pad_id(tokenizer))
    inputs = batch.tokens[:, :-1]
    return mean_kl(model(inputs), reference(inputs), batch.mask)


def policy_drift(
    model, reference, tokenizer, prompts: Sequence[str], *, max_tokens: int = 16, seed: int = 0, batch_size: int = 64
) -> dict[str, float]:
    """The policy answers `prompts` (one sample each at temperature 1, seeded); on those completion tokens, the mean
    per-token KL(policy || reference) and policy entropy over the full vocabulary (nats). NaN for no prompts."""
    if not prompts:
        return {"kl": math.nan, "entropy": math.nan, "tokens": 0}
    outs = generate(
        model,
        tokenizer,
        list(prompts),
        GenerationConfig(temperature=1.0, max_tokens=max_tokens, batch_size=batch_size, seed=seed),
    )
    examples = [(p, o[0].text) for p, o in zip(prompts, outs)]
    batch = collate([encode(tokenizer, p, c) for p, c in examples], pad_id=_pad_id(tokenizer))
    inputs = batch.tokens[:, :-1]
    logits = model(inputs)
    return {
        "kl": mean_kl(logits, reference(inputs), batch.mask),
        "entropy": mean_entropy(logits, batch.mask),
        "tokens": int(batch.mask.sum().item()),
    }
