"""A judge model: an MLX model prompted to rate an answer 0-10, or to pick the better of two answers (the second,
independent judgement SPEC.md's agreement rate asks for: the same judge with the two answers swapped); unparseable
replies are reported, never guessed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

JUDGE_TEMPLATE = (
    "Rate how well the answer responds to the question, from 0 (useless or wrong) to 10 (perfect).\n"
    "Question: {prompt}\nAnswer: {completion}\nReply with the number only.\nRating:"
)
PAIRWISE_TEMPLATE = (
    "Which answer responds better to the question?\nQuestion: {prompt}\nAnswer A: {first}\nAnswer B: {second}\n"
    "Reply with A or B only.\nBetter:"
)
_CHOICE = re.compile(r"^\W*(?:answer\s+)?([AB])\b", re.IGNORECASE)
_RATING = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?")


def parse_rating(text: str, scale: float = 10.0) -> float | None:
    """The first rating in a judge's reply, as a fraction of `scale`; None when there is none in range.

    Accepts "8", "Rating: 7/10", "I'd give it 9.5". A "x/y" rating is read as x out of y.
    """
    m = _RATING.search(text)
    if not m:
        return None
    value = float(m.group(1))
    denom = float(m.group(2)) if m.group(2) else scale
    if denom <= 0 or value < 0 or value > denom:
        return None
    return value / denom


def parse_choice(text: str) -> str | None:
    """'A' or 'B' from a pairwise judge's reply ("B", " a.", "Answer B"), None when it names neither first."""
    m = _CHOICE.match(text)
    return m.group(1).upper() if m else None


@dataclass
class JudgeScorer:
    """An MLX model that rates answers. Unparseable replies give NaN and are listed in `unparsed`."""

    model: object
    tokenizer: object
    template: str = JUDGE_TEMPLATE
    pairwise_template: str = PAIRWISE_TEMPLATE
    max_tokens: int = 8
    batch_size: int = 16
    scale: float = 10.0
    name: str = "judge"
    unparsed: list[tuple[int, str]] = field(default_factory=list)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        from realign.model.generate import GenerationConfig, generate

        queries = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions, strict=True)]
        replies = generate(
            self.model,
            self.tokenizer,
            queries,
            GenerationConfig(temperature=0.0, max_tokens=self.max_tokens, batch_size=self.batch_size),
        )
        self.unparsed = []
        scores = []
        for i, r in enumerate(replies):
            value = parse_rating(r[0].text, self.scale)
            if value is None:
                self.unparsed.append((i, r[0].text))
                scores.append(float("nan"))
            else:
                scores.append(value)
        return scores

    def prefers_second(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[int | None]:
        """Per pair, shown as Answer A = first, Answer B = second: +1 when the judge picks the second, -1 the first,
        None when its reply names neither (listed in `unparsed`, never guessed)."""
        from realign.model.generate import GenerationConfig, generate

        queries = [
            self.pairwise_template.format(prompt=p, first=a, second=b)
            for p, a, b in zip(prompts, first, second, strict=True)
        ]
        replies = generate(
            self.model,
            self.tokenizer,
            queries,
            GenerationConfig(temperature=0.0, max_tokens=4, batch_size=self.batch_size),
        )
        self.unparsed = []
        picks: list[int | None] = []
        for i, r in enumerate(replies):
            choice = parse_choice(r[0].text)
            if choice is None:
                self.unparsed.append((i, r[0].text))
            picks.append(None if choice is None else 1 if choice == "B" else -1)
        return picks
