"""Honest comparisons: a difference between two models on the same items, with a paired-bootstrap interval.

Two models answered the same evaluation items; the difference of their mean scores is reported with a 95%
percentile interval from resampling the items (paired: an item is drawn with both its scores, so what is
shared between them cancels). When the interval contains 0 the data cannot tell the two apart, and the
report says "within noise" instead of "beat" or "did not beat". The interval covers the sampling of evaluation
items only, not the variation between training runs with other seeds: "outside noise" is not "reproducible".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a - b), low, high): the difference of means with its paired-bootstrap percentile interval.

    Items are resampled with replacement `resamples` times (seeded, so a report is reproducible); the interval
    is the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled mean differences.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(d))  # bounded memory for long evaluation sets
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start : start + n] = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(d.mean()), float(low), float(high)


class Comparison(BaseModel):
    """`first` minus `second` on one metric over the same items."""

    metric: str = Field(description="What was compared, e.g. 'reverse_accuracy'.")
    first: str = Field(description="Label of the first model, e.g. 'after'.")
    second: str = Field(description="Label of the second model, e.g. 'before' or 'control'.")
    first_value: float = Field(description="Mean score of the first model.")
    second_value: float = Field(description="Mean score of the second model.")
    difference: float = Field(description="first_value - second_value.")
    ci_low: float = Field(description="Lower bound of the 95% paired-bootstrap interval of the difference.")
    ci_high: float = Field(description="Upper bound of the interval.")
    items: int = Field(description="Evaluation items both models answered.")

    @property
    def measured(self) -> bool:
        """False when there were no items (every number NaN)."""
        return self.items > 0 and not np.isnan(self.difference)

    @property
    def within_noise(self) -> bool:
        """The interval contains 0: the items cannot tell the two models apart."""
        return self.measured and self.ci_low <= 0 <= self.ci_high

    def describe(self) -> str:
        """e.g. 'after - control on reverse_accuracy: 0.620 vs 0.645, -0.025 (95% CI [-0.061, +0.010], 200 items):
        within noise'."""
        if not self.measured:
            return f"{self.first} - {self.second} on {self.metric}: not measured (no evaluation items)"
        verdict = "within noise" if self.within_noise else "higher" if self.difference > 0 else "lower"
        return (
            f"{self.first} - {self.second} on {self.metric}: {self.first_value:.3f} vs {self.second_value:.3f}, "
            f"{self.difference:+.3f} (95% CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}], {self.items} items): {verdict}"
        )


def compare(
    metric: str, first: str, first_scores: Sequence[float], second: str, second_scores: Sequence[float]
) -> Comparison:
    """The paired comparison of two models' per-item scores on the same items. An item either score is NaN for (a
    judge that gave no rating) is left out of both, so the means stay paired; `items` counts those compared."""
    a, b = np.asarray(first_scores, dtype=float), np.asarray(second_scores, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff, low, high = paired_bootstrap_ci(a, b)
    return Comparison(
        metric=metric,
        first=first,
        second=second,
        first_value=float(a.mean()) if len(a) else float("nan"),
        second_value=float(b.mean()) if len(b) else float("nan"),
        difference=diff,
        ci_low=low,
        ci_high=high,
        items=len(a),
    )


def verdict(
    method: str,
    target: str,
    before_after: Comparison,
    versus_control: Comparison | None,
    control: str = "",
    chosen_on_target: bool = False,
    measure: str = "accuracy",
) -> str:
    """Plain words on what the method did to the target skill, and whether it beat the control, noise said as noise.

    chosen_on_target: stage 6 judged the rounds on these same target items (no separate dev split), which makes
    the after-vs-before interval optimistic; the verdict says so. measure: what the target's number is ('accuracy',
    or 'mean judge rating' for an open set).
    """
    gain = before_after
    if not gain.measured:
        return f"{target} {measure} not measured: the target set has no (rated) items"
    change = (
        f"{target} {measure} {gain.second_value:.3f} -> {gain.first_value:.3f} ({gain.difference:+.3f}, "
        f"95% CI [{gain.ci_low:+.3f}, {gain.ci_high:+.3f}]" + ("; within noise)" if gain.within_noise else ")")
    )
    if chosen_on_target:
        change += " (rounds were judged on these same items, no dev split: this interval is optimistic)"
    if versus_control is None:
        return f"{change}; no control was run"
    c = versus_control
    against = (
        f"{c.first_value:.3f} vs {control or 'the control'} {c.second_value:.3f}, {c.difference:+.3f} "
        f"(95% CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}])"
    )
    if c.within_noise:
        outcome = f"{method} and the control are within noise of each other on {target}: {against}"
    elif c.difference > 0:
        outcome = f"{method} beat the control on {target}: {against}"
    else:
        outcome = f"{method} did NOT beat the control on {target}: {against}"
    return f"{outcome}; {change}"


def reward_hacking(reward: Comparison, accuracy: Comparison) -> bool:
    """The learned reward went up while the verifier's accuracy went down, both beyond their intervals: the policy
    found what the reward model likes instead of what is right."""
    return (
        reward.measured
        and accuracy.measured
        and not reward.within_noise
        and not accuracy.within_noise
        and reward.difference > 0 > accuracy.difference
    )
