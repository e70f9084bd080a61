"""Turning sampled, scored completions into preference pairs (best vs worst per prompt).

Every step that drops candidates counts them, so the stage can say where its
data went: no usable gap, identical texts, duplicates, evaluation overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

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
    no_gap: int  # prompts (or given pairs) whose best - worst (chosen - rejected) gap is below the minimum
    identical: int  # prompts whose best and worst texts are the same
    duplicates: int
    contaminated: int  # pairs dropped because they overlap an evaluation item
    pairs: int
    preference_gap: float
    agreement_rate: float
    decontamination: float
    given: int = 0  # the user's own pairs read (data.pairs), before any was dropped
    given_no_gap: int = 0  # of those, pairs the scorer does not prefer as labelled by the minimum gap (in no_gap)

    def as_dict(self) -> dict:
        return asdict(self)


def _ngrams(ws: list[str], k: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


@dataclass
class _Counts:
    """What happened to candidates before decontamination (see PairStats)."""

    prompts: int = 0
    candidates: int = 0
    unscored: int = 0
    blank: int = 0
    no_gap: int = 0
    identical: int = 0
    duplicates: int = 0
    given: int = 0
    given_no_gap: int = 0
    judged: list[int] = field(default_factory=list)  # the scorer's verdict on each scored given pair (+1/0/-1)


def build_pairs(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    second_scores: Sequence[Sequence[float]] | None,
    *,
    min_gap: float,
    eval_texts: Sequence[str] = (),
    ngram: int = 13,
    given: "GivenPairs | None" = None,
    second_pairwise: Callable[[list[str], list[str], list[str]], list[int | None]] | None = None,
) -> tuple[list[dict], PairStats]:
    """Best vs worst completion per prompt, kept when score(best) - score(worst) >= min_gap.

    second_scores: an independent judgement of the same completions; agreement rate is
    the fraction of kept pairs it ranks the same way (+1: chosen wins; a tie disagrees).
    second_pairwise: where there are no second scores, a pairwise judgement of each generated pair, called as
    (prompts, first answers, second answers) and returning +1 when it prefers the second, -1 the first, None when it
    could not decide. It is asked in both orders, so a judge that always names one position cannot agree: the
    chosen answer winning both times agrees (+1), the rejected winning both times disagrees (-1), a different
    winner per order is a tie (a disagreement), and no decision in either order leaves the pair out.
    eval_texts: evaluation items; a pair sharing an n-gram (n = min(ngram, item length)) with
    one is dropped, and decontamination is measured on the pairs that remain.
    given: the user's own pairs, scored (see given_pairs), placed first; the generated pairs top them up.
    Returns (pairs with prompt, chosen, rejected, chosen_score, rejected_score, gap, agree; stats).
    """
    counts = _Counts(prompts=len(prompts), candidates=sum(len(c) for c in completions))
    pairs, seen = [], set()
    if given is not None:
        pairs = _given(given, counts, seen, min_gap)
    n_given = len(pairs)
    for i, (p, comps, sc) in enumerate(zip(prompts, completions, scores, strict=True)):
        s = np.asarray(sc, dtype=float)
        nonblank = np.array([bool(c.strip()) for c in comps])
        counts.blank += int((~nonblank).sum())
        counts.unscored += int((np.isnan(s) & nonblank).sum())
        ok = ~np.isnan(s) & nonblank
        if ok.sum() < 2:
            counts.no_gap += 1
            continue
        idx = np.flatnonzero(ok)
        best = idx[np.argmax(s[idx])]
        worst = idx[np.argmin(s[idx])]
        if s[best] - s[worst] < min_gap - 1e-12:
            counts.no_gap += 1
            continue
        if comps[best].strip() == comps[worst].strip():
            counts.identical += 1
            continue
        key = (p, comps[best], comps[worst])
        if key in seen:
            counts.duplicates += 1
            continue
        seen.add(key)
        agree = None
        if second_scores is not None:
            agree = int(np.sign(second_scores[i][best] - second_scores[i][worst]))
        pairs.append(_pair(p, comps[best], comps[worst], s[best], s[worst], agree))
    generated = pairs[n_given:]  # the given pairs' second judgement is their label
    if second_scores is None and second_pairwise is not None and generated:
        prompts_, chosen, rejected = ([q[k] for q in generated] for k in ("prompt", "chosen", "rejected"))
        swapped = second_pairwise(prompts_, rejected, chosen)  # +1: picks the chosen, shown second
        shown_first = second_pairwise(prompts_, chosen, rejected)  # -1: picks the chosen, shown first
        for q, a, b in zip(generated, swapped, shown_first, strict=True):
            q["agree"] = _both_orders(a, b)
    return _finish(pairs, counts, eval_texts, ngram)


def _both_orders(swapped: int | None, shown_first: int | None) -> int | None:
    """One verdict from a pairwise judge asked with the chosen answer second (+1 picks it) and first (-1 picks it)."""
    if swapped is None or shown_first is None:
        return None
    if swapped == 1 and shown_first == -1:
        return 1
    if swapped == -1 and shown_first == 1:
        return -1
    return 0  # a different winner per order: position, not content, decided


@dataclass
class GivenPairs:
    """The user's labelled pairs (data.pairs) and the stage's scorer's scores of both answers (NaN: unscored)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    chosen_scores: list[float]
    rejected_scores: list[float]


def given_pairs(
    given: GivenPairs, *, min_gap: float, eval_texts: Sequence[str] = (), ngram: int = 13
) -> tuple[list[dict], PairStats]:
    """The user's pairs, checked by the scorer like generated ones: a pair is kept when the scorer prefers its chosen
    answer by at least min_gap. The label is the first judgement and the scorer the second, so the agreement rate is
    the share of all scored pairs the scorer ranks as labelled (before the gap filter, which would make it 1)."""
    return build_pairs([], [], [], None, min_gap=min_gap, eval_texts=eval_texts, ngram=ngram, given=given)


def _given(given: GivenPairs, counts: _Counts, seen: set, min_gap: float) -> list[dict]:
    pairs = []
    rows = zip(given.prompts, given.chosen, given.rejected, given.chosen_scores, given.rejected_scores, strict=True)
    for p, c, r, sc, sr in rows:
        counts.given += 1
        counts.candidates += 2
        if sc != sc or sr != sr:
            counts.unscored += int(sc != sc) + int(sr != sr)
            continue
        counts.judged.append(int(np.sign(sc - sr)))
        if sc - sr < min_gap - 1e-12:
            counts.no_gap += 1
            counts.given_no_gap += 1
            continue
        if (p, c, r) in seen:
            counts.duplicates += 1
            continue
        seen.add((p, c, r))
        pairs.append(_pair(p, c, r, sc, sr, None))
    return pairs


def _pair(prompt: str, chosen: str, rejected: str, sc: float, sr: float, agree: int | None) -> dict:
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_score": float(sc),
        "rejected_score": float(sr),
        "gap": float(sc - sr),
        "agree": agree,
    }


def _finish(pairs: list[dict], counts: _Counts, eval_texts: Sequence[str], ngram: int) -> tuple[list[dict], PairStats]:
    """Drop pairs overlapping an evaluation item, then measure gap, agreement and decontamination on what remains."""
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
    train_texts = [" ".join((q["prompt"], q["chosen"], q["rejected"])) for q in kept]
    decon = decontamination(train_texts, list(eval_texts), n=ngram).score if eval_texts else float("nan")
    # Given pairs are judged before the gap filter (all of them); generated pairs where a second judgement exists.
    second = counts.judged + [q["agree"] for q in kept if q["agree"] is not None]
    agreement = agreement_rate([1] * len(second), second) if second else float("nan")
    stats = PairStats(
        prompts=counts.prompts,
        candidates=counts.candidates,
        unscored=counts.unscored,
        blank=counts.blank,
        no_gap=counts.no_gap,
        identical=counts.identical,
        duplicates=counts.duplicates,
        contaminated=len(pairs) - len(kept),
        pairs=len(kept),
        preference_gap=float(np.mean([q["gap"] for q in kept])) if kept else float("nan"),
        agreement_rate=agreement,
        decontamination=decon,
        given=counts.given,
        given_no_gap=counts.given_no_gap,
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
