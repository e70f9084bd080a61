"""Measuring a behaviour and the capabilities beside it, per item, so before/after comparisons are paired.

behaviour: 1 when the greedy answer to a held-out prompt shows the behaviour (starts with one of the prefixes),
else 0; its mean is the behaviour rate. capability: 1 when the greedy answer to a benchmark prompt equals the
answer (exact match after trimming), per benchmark. KL: mean per-token KL(model || reference) over the answer tokens
of harmless (prompt, answer) texts, full vocabulary, nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from realign.eval.metrics import token_kl
from realign.model.generate import GenerationConfig, generate
from realign.model.logprobs import _pad_id, collate, encode
from realign.steer.behaviour import BehaviourSets, shows_any
from realign.steer.steering import SteeringVector, steered


@dataclass
class Measures:
    """Per-item outcomes of one model: behaviour flags [eval_harmful], its answers, benchmark name -> exact flags."""

    behaviour: list[float]
    answers: list[str]
    benchmarks: dict[str, list[float]] = field(default_factory=dict)

    @property
    def behaviour_rate(self) -> float:
        return sum(self.behaviour) / len(self.behaviour) if self.behaviour else float("nan")

    def accuracies(self) -> dict[str, float]:
        """{NAME_accuracy} per benchmark (the names retention and the summary use)."""
        return {f"{k}_accuracy": (sum(v) / len(v) if v else float("nan")) for k, v in self.benchmarks.items()}


def _greedy(model, tokenizer, prompts: Sequence[str], max_tokens: int) -> list[str]:
    outs = generate(model, tokenizer, list(prompts), GenerationConfig(temperature=0.0, max_tokens=max_tokens, n=1))
    return [o[0].text for o in outs]


def measure(
    model,
    tokenizer,
    sets: BehaviourSets,
    prefixes: Sequence[str],
    *,
    max_tokens: int = 12,
    steering: Sequence[SteeringVector] = (),
) -> Measures:
    """Greedy answers of `model` (steered by `steering` while it answers) to the behaviour and benchmark prompts."""
    with steered(model, steering):
        answers = _greedy(model, tokenizer, sets.eval_harmful, max_tokens)
        flags = [float(shows_any(a, prefixes)) for a in answers]
        bench = {}
        for name, (prompts, refs) in sets.benchmarks.items():
            got = _greedy(model, tokenizer, prompts, max_tokens)
            bench[name] = [float(g.strip() == r.strip()) for g, r in zip(got, refs)]
    return Measures(flags, answers, bench)


def harmless_kl(
    model,
    reference,
    tokenizer,
    examples: Sequence[tuple[str, str]],
    *,
    steering: Sequence[SteeringVector] = (),
    batch_size: int = 16,
) -> float:
    """Mean per-token KL(model || reference) over the answer tokens of `examples`; `model` steered by `steering`
    (model and reference may be the same object: the reference's logits are taken before steering). In batches of
    `batch_size` (full-vocabulary logits of every item at once would not fit for a large model): the sum of KL over
    answer tokens and their count add up over batches, so the mean is every answer token's, as in one batch. KL is
    never negative: a mean below 0 (float32 rounding of two nearly equal distributions, ~-1e-8) is reported as 0."""
    if not examples:
        return float("nan")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([encode(tokenizer, p, c) for p, c in chunk], pad_id=_pad_id(tokenizer))
        inputs = batch.tokens[:, :-1]
        ref_logits = reference(inputs)
        mx.eval(ref_logits)
        with steered(model, steering):
            logits = model(inputs)
            mx.eval(logits)
        kl = token_kl(logits, ref_logits)
        total += float((kl * batch.mask).sum().item())
        count += float(batch.mask.sum().item())
    return max(total / count, 0.0) if count else float("nan")
