"""Scorers: `score(prompts, completions) -> list of floats in [0, 1]`.

Three kinds, as the workflows need them:
  Verifier     (verifiers.py) exact / numeric / graded check against a known answer;
  JudgeScorer  (judge.py) an MLX model prompted to rate an answer 0-10; an answer it cannot
               parse is reported (NaN + `unparsed`), never guessed;
  RewardModel  (reward_model.py) a linear head on a frozen model's pooled hidden states, trained
               with the Bradley-Terry loss -log sigmoid(r_c - r_r); score = sigmoid(reward).
sampling.py samples N answers per prompt and scores them (one shard of stage 2's work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Scorer(Protocol):
    name: str

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """One score in [0, 1] per completion (NaN where the scorer could not decide)."""
        ...
