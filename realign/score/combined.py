"""A weighted sum of scorers: one reward from several judgements (e.g. reward model + verifier)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class WeightedSum:
    """score = sum of weight * scorer.score over (scorer, weight) terms; NaN where any term could not decide."""

    def __init__(self, terms: Sequence[tuple[object, float]]):
        terms = [(s, float(w)) for s, w in terms if w]
        if not terms:
            raise ValueError("a weighted sum needs at least one scorer with a non-zero weight")
        self.terms = terms
        self.name = " + ".join(f"{w:g}*{getattr(s, 'name', type(s).__name__)}" for s, w in terms)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        total = np.zeros(len(completions))
        for scorer, weight in self.terms:
            total += weight * np.asarray(scorer.score(prompts, completions), dtype=float)
        return total.tolist()
