"""Probes of a model: accuracy on verifiable held-out sets and mean rating on open-ended ones (the sweep every stage
uses), perplexity, win rate, and KL(policy || reference) on a fixed set of texts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from realign.data.datasets import LETTERS
from realign.eval.benchmarks import MATH_MAX_TOKENS, choice_loglikelihoods, numbers_match, pick
from realign.eval.metrics import mean_entropy, mean_kl
from realign.eval.verdict import Comparison, compare
from realign.model.generate import GenerationConfig, generate
from realign.model.logprobs import _pad_id, collate, encode, mean_completion_loss
from realign.score.verifiers import positional_match


@dataclass
class AccuracyResult:
    accuracy: float  # exact-match fraction (NaN for an open set: no answer to match)
    mean_score: float  # mean graded score (an open set's: mean rating over the rated items)
    predictions: list[str]
    exact: list[bool]  # per item, for paired comparisons
    scores: list[float]  # per item graded score (NaN: the scorer could not rate it)
    open: bool = False  # rated by a judge or reward model, not checked against an answer
    unscored: int = 0  # items the scorer could not rate (a judge reply without a rating)

    @property
    def value(self) -> float:
        """The headline number: accuracy, or an open set's mean rating."""
        return self.mean_score if self.open else self.accuracy

    @property
    def per_item(self) -> list[float]:
        """What paired comparisons resample: 1/0 per item, or an open set's ratings (NaN where unrated)."""
        return list(self.scores) if self.open else [float(e) for e in self.exact]


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
    """exp(mean per-token NLL) of the completions given their prompts (token-weighted over examples).
    ValueError for no examples: there is nothing to measure, and a made-up number would pass a gate."""
    if not examples:
        raise ValueError(
            "no held-out text to measure perplexity on: give an evaluation set with answers (a benchmark), or "
            "'reference' answers in the open-ended target set"
        )
    losses = mean_completion_loss(
        model, tokenizer, [p for p, _ in examples], [c for _, c in examples], batch_size=batch_size
    )
    # mean_completion_loss is per example; weight by token count for a corpus perplexity
    counts = np.array([encode(tokenizer, p, c).n_completion for p, c in examples], dtype=float)
    return float(math.exp(float((losses * counts).sum() / counts.sum())))


def outcomes(scores_new: Sequence[float], scores_old: Sequence[float]) -> list[float]:
    """Per item: 1 when the new model's score is higher, 0.5 on a tie, 0 when lower; items either model's scorer
    could not rate (NaN) are left out. Their mean is the win rate, and resampling them gives its interval."""
    n, o = np.asarray(scores_new, dtype=float), np.asarray(scores_old, dtype=float)
    keep = ~(np.isnan(n) | np.isnan(o))
    n, o = n[keep], o[keep]
    return (np.where(n > o, 1.0, 0.0) + np.where(n == o, 0.5, 0.0)).tolist()


def win_rate(scores_new: Sequence[float], scores_old: Sequence[float]) -> float:
    """(wins + ties / 2) / items of the new model against the old one, by per-item scores (rated items only)."""
    w = outcomes(scores_new, scores_old)
    return float(np.mean(w)) if w else float("nan")


def win_rate_comparison(metric: str, scores_new: Sequence[float], scores_old: Sequence[float]) -> Comparison:
    """The new model's win rate against the old one (`metric`_win_rate) as a comparison with an even split (0.5
    per item): its paired-bootstrap interval says whether the win rate is distinguishable from a coin toss."""
    w = outcomes(scores_new, scores_old)
    return compare(f"{metric}_win_rate", "after", w, "even", [0.5] * len(w))


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


def load_scorer(kind: str, path: str):
    """The scorer an open evaluation set names: a judge model (JudgeScorer) or a reward model (RewardModelScorer)."""
    from realign.model.load import load_model
    from realign.score.judge import JudgeScorer
    from realign.score.reward_model import load_reward_model

    if kind == "judge":
        lm = load_model(path)
        return JudgeScorer(lm.model, lm.tokenizer)
    if kind == "reward_model":
        return load_reward_model(path)
    raise ValueError(f"unknown scorer kind {kind!r} (expected judge or reward_model)")


def rated(model, tokenizer, prompts: Sequence[str], scorer, *, max_tokens: int, batch_size: int = 64) -> AccuracyResult:
    """Greedy answers to open-ended prompts, each rated in [0, 1] by `scorer` (NaN where it could not rate one);
    the mean is over the rated answers, and how many were not is kept."""
    outs = generate(
        model, tokenizer, list(prompts), GenerationConfig(temperature=0.0, max_tokens=max_tokens, batch_size=batch_size)
    )
    preds = [o[0].text for o in outs]
    scores = [float(s) for s in scorer.score(list(prompts), preds)]
    unscored = int(np.isnan(scores).sum()) if scores else 0
    mean = float(np.nanmean(scores)) if len(scores) > unscored else float("nan")
    return AccuracyResult(float("nan"), mean, preds, [], scores, open=True, unscored=unscored)


def score_eval_sets(
    model,
    tokenizer,
    eval_sets: Sequence,
    *,
    max_tokens: int = 12,
    is_correct: Callable[[str, str], bool] | None = None,
    scorers: dict | None = None,
) -> dict[str, AccuracyResult]:
    """Accuracy of `model` on each evaluation set (EvalItems), by set name, as its format says:
    qa: greedy answers judged by exact match, or by `is_correct(prediction, answer)` (a verifier);
    choice: the likeliest option's letter (log-likelihood, no generation); math: greedy answers whose last number
    equals the reference (`is_correct` does not apply), with at least MATH_MAX_TOKENS tokens to work it out;
    open: greedy answers rated by the set's scorer (loaded once per call, or taken from `scorers`, keyed by the set's
    (kind, directory), so several models are rated by one loaded judge).
    A set's own max_tokens overrides the budget."""
    out: dict[str, AccuracyResult] = {}
    scorers = {} if scorers is None else scorers
    for ev in eval_sets:
        fmt = getattr(ev, "format", "qa")
        own = getattr(ev, "max_tokens", None)
        if fmt == "open":
            if ev.scorer not in scorers:
                scorers[ev.scorer] = load_scorer(*ev.scorer)
            out[ev.name] = rated(model, tokenizer, ev.prompts, scorers[ev.scorer], max_tokens=own or max_tokens)
        elif fmt == "choice":
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
    """{NAME_accuracy, NAME_score} per set (NAME_score only for an open set, which has no accuracy): the metric
    names the gates, retention and the summary use."""
    out: dict[str, float] = {}
    for name, r in results.items():
        if not r.open:
            out[f"{name}_accuracy"] = r.accuracy
        out[f"{name}_score"] = r.mean_score
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


def describe_evaluation(eval_sets: Sequence, verifier: str | None = None, unscored: int = 0) -> str:
    """Which kind of evaluation ran, in words, for the summary: per set, how its answers were judged."""
    parts = []
    for ev in eval_sets:
        fmt, n = getattr(ev, "format", "qa"), len(ev.prompts)
        if fmt == "open":
            kind, path = ev.scorer
            how = (
                f"open-ended, greedy answers of the stage-1 and final models rated 0-1 by the {kind.replace('_', ' ')} "
                f"{path}: mean rating and win rate against the stage-1 model, with 95% paired-bootstrap intervals"
                + (f" ({unscored} answers unrated, left out)" if unscored else "")
            )
        elif fmt == "choice":
            how = "multiple choice by the log-likelihood of each option's letter"
        elif fmt == "math":
            how = "the last number of a greedy worked answer against the reference"
        else:
            how = f"greedy answers checked by the {verifier} verifier" if verifier else "exact match of greedy answers"
        if getattr(ev, "items", None) is not None:
            how += "; grounded: hallucination rate, factuality, citation accuracy and calibration error"
        parts.append(f"{ev.name} ({ev.role}, {n} items): {how}")
    return "; ".join(parts)
