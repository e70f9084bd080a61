"""Verifiers: check a completion against a known answer (exact, numeric, graded, custom)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal


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


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


class Verifier:
    """Checks completions against known answers.

    answers: prompt -> expected answer (a mapping or a function).
    mode "exact": trimmed string equality; "numeric": the completion's last number equals
    the expected number within `tolerance`; "graded": score = positional_match in [0, 1] (is_correct
    stays exact); or pass `check(completion, expected) -> bool`.
    """

    def __init__(
        self,
        answers: Mapping[str, str] | Callable[[str], str],
        mode: Literal["exact", "numeric", "graded"] = "exact",
        check: Callable[[str, str], bool] | None = None,
        tolerance: float = 1e-6,
        name: str = "verifier",
    ):
        self.answers, self.mode, self.check, self.tolerance, self.name = answers, mode, check, tolerance, name

    def expected(self, prompt: str) -> str:
        if callable(self.answers):
            return self.answers(prompt)
        if prompt not in self.answers:
            raise KeyError(
                f"no known answer for prompt {prompt[:80]!r}: the verifier can only score prompts it has answers for"
            )
        return self.answers[prompt]

    def is_correct(self, prompt: str, completion: str) -> bool:
        expected = self.expected(prompt)
        if self.check is not None:
            return bool(self.check(completion, expected))
        if self.mode == "numeric":
            got, want = last_number(completion), last_number(expected)
            return got is not None and want is not None and abs(got - want) <= self.tolerance
        return completion.strip() == expected.strip()

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.mode == "graded":
            return [positional_match(c, self.expected(p)) for p, c in zip(prompts, completions, strict=True)]
        return [1.0 if self.is_correct(p, c) else 0.0 for p, c in zip(prompts, completions, strict=True)]
