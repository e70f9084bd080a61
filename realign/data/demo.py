"""Embedded, verifiable skills a tiny model can learn on a CPU in about a minute.

- reverse ("Reverse: 4821" -> "1284"): the target skill the workflows improve.
- copy ("Copy: 4821" -> "4821"): a second skill used only as a capability benchmark,
  to see whether aligning the target skill costs anything elsewhere.

Digit strings are drawn without replacement, and a string is in exactly one of the
train and held-out splits, so held-out accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = {
    "reverse": ("Reverse: {x}", lambda x: x[::-1]),
    "copy": ("Copy: {x}", lambda x: x),
    "count": ("Count the digits: {x}", lambda x: str(len(x))),
}


@dataclass(frozen=True)
class TaskExample:
    task: str
    digits: str
    prompt: str
    answer: str

    def sft_row(self) -> dict:
        return {"instruction": self.prompt, "output": self.answer}


def example(task: str, digits: str) -> TaskExample:
    template, fn = TASKS[task]
    return TaskExample(task, digits, template.format(x=digits), fn(digits))


def digit_strings(n: int, seed: int, min_len: int = 3, max_len: int = 6) -> list[str]:
    """`n` distinct digit strings with lengths in [min_len, max_len]."""
    rng = random.Random(seed)
    capacity = sum(10**k for k in range(min_len, max_len + 1))
    if n > capacity:
        raise ValueError(f"only {capacity} distinct strings of {min_len}-{max_len} digits")
    seen: set[str] = set()
    out: list[str] = []  # in draw order: set iteration order depends on PYTHONHASHSEED
    while len(out) < n:
        s = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_len, max_len)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def splits(
    task: str, n_train: int, n_eval: int, seed: int = 0, min_len: int = 3, max_len: int = 6
) -> tuple[list[TaskExample], list[TaskExample]]:
    """Disjoint (train, held-out) examples of a task; the same seed gives the same splits."""
    strings = digit_strings(n_train + n_eval, seed, min_len, max_len)
    return [example(task, s) for s in strings[:n_train]], [example(task, s) for s in strings[n_train:]]


def is_correct(completion: str, answer: str) -> bool:
    """Exact match after trimming whitespace (the verifier of both skills)."""
    return completion.strip() == answer
