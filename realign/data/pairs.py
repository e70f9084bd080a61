"""Turning sampled, scored completions into preference pairs (best vs worst per prompt).

Every step that drops candidates counts them, so the stage can say where its
data went: no usable gap, identical texts, duplicates, evaluation overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from realign.eval.metrics import agreement_rate, decontamination, words

# The columns of a pairs table (pairs.parquet), in order.
PAIR_COLUMNS = ["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "gap", "agree"]


@dataclass
class PairStats:
    """Counts and metrics of one round of preference data (rates in [0, 1], NaN when not computable)."""

    prompts: int
    candidates: int
    unscored: int  # candidates the scorer could not score (NaN), excluded
    blank: int  # empty completions, excluded (a pair needs two texts)
    no_gap: int  # prompts whose best - worst gap is below the minimum
    identical: int  # prompts whose best and worst texts are the same
    duplicates: int
    contaminated: int  # pairs dropped because they overlap an evaluation item
    pairs: int
    preference_gap: float
    agreement_rate: float
    decontamination: float

    def as_dict(self) -> dict:
        return asdict(self)


def _ngrams(ws: list[str], k: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def build_pairs(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    second_scores: Sequence[Sequence[float]] | None,
    *,
    min_gap: float,
    eval_texts: Sequence[str] = (),
    ngram: int = 13,
) -> tuple[list[dict], PairStats]:
    """Best vs worst completion per prompt, kept when score(best) - score(worst) >= min_gap.

    second_scores: an independent judgement of the same completions; agreement rate is
    the fraction of kept pairs it ranks the same way (+1: chosen wins; a tie disagrees).
    eval_texts: evaluation items; a pair sharing an n-gram (n = min(ngram, item length)) with
    one is dropped, and decontamination is measured on the pairs that remain.
    Returns (pairs with prompt, chosen, rejected, chosen_score, rejected_score, gap, agree; stats).
    """
    pairs, seen = [], set()
    unscored = blank = no_gap = identical = dup = 0
    for i, (p, comps, sc) in enumerate(zip(prompts, completions, scores, strict=True)):
        s = np.asarray(sc, dtype=float)
        nonblank = np.array([bool(c.strip()) for c in comps])
        blank += int((~nonblank).sum())
        unscored += int((np.isnan(s) & nonblank).sum())
        ok = ~np.isnan(s) & nonblank
        if ok.sum() < 2:
            no_gap += 1
            continue
        idx = np.flatnonzero(ok)
        best = idx[np.argmax(s[idx])]
        worst = idx[np.argmin(s[idx])]
        if s[best] - s[worst] < min_gap - 1e-12:
            no_gap += 1
            continue
        if comps[best].strip() == comps[worst].strip():
            identical += 1
            continue
        key = (p, comps[best], comps[worst])
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        agree = None
        if second_scores is not None:
            agree = int(np.sign(second_scores[i][best] - second_scores[i][worst]))
        pairs.append(
            {
                "prompt": p,
                "chosen": comps[best],
                "rejected": comps[worst],
                "chosen_score": float(s[best]),
                "rejected_score": float(s[worst]),
                "gap": float(s[best] - s[worst]),
                "agree": agree,
            }
        )

    # decontamination: drop pairs overlapping any evaluation item, then measure what remains
    eval_words = [words(t) for t in eval_texts]
    lengths = sorted({min(ngram, len(w)) for w in eval_words if w})
    eval_grams = {
        k: set().union(*(_ngrams(w, k) for w in eval_words if w and min(ngram, len(w)) == k)) for k in lengths
    }
    kept = []
    for pair in pairs:
        ws = words(" ".join((pair["prompt"], pair["chosen"], pair["rejected"])))
        if any(_ngrams(ws, k) & eval_grams[k] for k in lengths):
            continue
        kept.append(pair)
    contaminated = len(pairs) - len(kept)
    train_texts = [" ".join((q["prompt"], q["chosen"], q["rejected"])) for q in kept]
    decon = decontamination(train_texts, list(eval_texts), n=ngram).score if eval_texts else float("nan")
    agreement = (
        agreement_rate([1] * len(kept), [q["agree"] for q in kept])
        if second_scores is not None and kept
        else float("nan")
    )
    stats = PairStats(
        prompts=len(prompts),
        candidates=sum(len(c) for c in completions),
        unscored=unscored,
        blank=blank,
        no_gap=no_gap,
        identical=identical,
        duplicates=dup,
        contaminated=contaminated,
        pairs=len(kept),
        preference_gap=float(np.mean([q["gap"] for q in kept])) if kept else float("nan"),
        agreement_rate=agreement,
        decontamination=decon,
    )
    return kept, stats


def unparsed_ratings(completions: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> int:
    """Non-blank answers the scorer gave no score (NaN): a judge's unparseable ratings, excluded and never guessed."""
    return sum(1 for ts, sc in zip(completions, scores) for t, s in zip(ts, sc) if t.strip() and s != s)


def graded_rows(
    prompts: Sequence[str], completions: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> list[dict]:
    """Every scored sample as GRPO rows (prompt + scored responses); blank or unscored answers cannot be written as
    responses (the stats count them), and a prompt left with none is left out."""
    rows = []
    for p, ts, sc in zip(prompts, completions, scores):
        responses = [{"text": t, "score": s} for t, s in zip(ts, sc) if t.strip() and s == s]
        if responses:
            rows.append({"prompt": p, "responses": responses})
    return rows
