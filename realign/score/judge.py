"""A judge model: an MLX model prompted to rate an answer 0-10; unparseable ratings are reported, never guessed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

JUDGE_TEMPLATE = (
    "Rate how well the answer responds to the question, from 0 (useless or wrong) to 10 (perfect).\n"
    "Question: {prompt}\nAnswer: {completion}\nReply with the number only.\nRating:"
)
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


@dataclass
class JudgeScorer:
    """An MLX model that rates answers. Unparseable replies give NaN and are listed in `unparsed`."""

    model: object
    tokenizer: object
    template: str = JUDGE_TEMPLATE
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
