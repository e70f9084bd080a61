"""Benchmarks from local files, beside prompt/answer exact match: multiple choice scored by log-likelihood
(MMLU-style rows) and worked math answers scored by their final number (GSM8K-style rows).

Multiple choice follows lm-eval harness's MMLU: the prompt is the question with lettered options and 'Answer:'
(realign.data.datasets.choice_prompt), each option is scored by the model's summed log-probability of its letter as
the continuation, and the likeliest letter is the prediction. Scoring the letter, not the option's text, keeps
options of different lengths comparable without length normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from realign.data.datasets import LETTERS
from realign.model.generate import prompt_tokens
from realign.model.logprobs import Encoded, _pad_id, collate, sequence_logps
from realign.score.verifiers import last_number

MATH_MAX_TOKENS = 256  # generation budget of a math set unless it names its own: room for a worked answer
NUMERIC_TOLERANCE = 1e-6  # as the numeric Verifier's: 42.0 is 42


def continuation(index: int, chat: bool = True) -> str:
    """The continuation scored for option `index`: its letter. Through the chat template the letter is the
    assistant's whole reply ('A'); on raw text it follows 'Answer:' after a space (' A'), as in lm-eval."""
    return LETTERS[index] if chat else f" {LETTERS[index]}"


def choice_loglikelihoods(
    model,
    tokenizer,
    prompts: Sequence[str],
    n_choices: Sequence[int],
    *,
    chat: bool = True,
    batch_size: int = 32,
    max_len: int = 512,
) -> list[np.ndarray]:
    """Per item, the summed log-probability [n_choices] of each option's continuation given the prompt.

    Every (item, option) row goes through the model in batches of `batch_size`; only the continuation's tokens
    count (the prompt and padding are masked), and no stop token is appended: the letter alone is scored.
    A prompt too long for `max_len` is cut from its left, so the options and 'Answer:' stay.
    """
    letters = [list(tokenizer.encode(continuation(k, chat), add_special_tokens=False)) for k in range(len(LETTERS))]
    rows: list[Encoded] = []
    for prompt, n in zip(prompts, n_choices, strict=True):
        p = prompt_tokens(tokenizer, prompt, chat)
        for k in range(n):
            c = letters[k]
            kept = p[-(max_len - len(c)) :]
            rows.append(Encoded(kept + c, len(kept)))
    sums = np.zeros(len(rows))
    pad = _pad_id(tokenizer)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        s, _ = sequence_logps(model, collate(chunk, pad_id=pad))
        mx.eval(s)
        sums[start : start + len(chunk)] = np.array(s)
    bounds = np.cumsum([0, *n_choices])
    return [sums[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def pick(loglikelihoods: Sequence[np.ndarray], labels: Sequence[int]) -> tuple[list[int], list[bool], list[float]]:
    """(predicted index, correct, probability of the right option among the options) per item: the prediction is
    the argmax (the first on a tie); the probability (softmax over the options' log-likelihoods) is a graded score
    that moves before the argmax does."""
    picked, correct, prob = [], [], []
    for ll, label in zip(loglikelihoods, labels, strict=True):
        p = np.exp(ll - ll.max())
        picked.append(int(np.argmax(ll)))
        correct.append(picked[-1] == label)
        prob.append(float(p[label] / p.sum()))
    return picked, correct, prob


def numbers_match(prediction: str, reference: str) -> bool:
    """The last number in the prediction equals the reference's, as numbers ('42.0' is '42', '1,000' is '1000'):
    GSM8K's scoring of a worked answer by its final number."""
    got, want = last_number(prediction), last_number(reference)
    return got is not None and want is not None and abs(got - want) <= NUMERIC_TOLERANCE
