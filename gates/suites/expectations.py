"""What every suite is built from: the remedies, and expectations that carry the metric, bounds, tier band and remedy.

Stage outputs are pandas DataFrames of two kinds:
  - row-level tables (preference pairs, iteration rounds): expectations per row plus aggregates;
  - one-row metric tables (KL, accuracy, ...): one column per metric, checked with
    `expect_column_mean_to_be_between`, whose observed value on one row is the metric itself.
Every expectation's `meta` says which metric it checks, the bound(s) in words, the tier band (if the
metric has HIGH/MEDIUM/REJECT tiers) and the remedy from the seeds' "Common Issues" tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
import great_expectations.expectations as gxe

from gates.context import gx_context
from realign.thresholds import FLOAT_SLACK, TierBand

# Remedies, from the seeds' "Common Issues" tables (and stage docs where the tables are silent).
REMEDY = {
    "preference_gap": (
        "Weak preference signal: collect more diverse examples, improve prompt quality, or use a stronger scorer"
    ),
    "min_pairs": "Insufficient data: generate more pairs (more prompts or samples per prompt), use data augmentation",
    "agreement_rate": "Preference conflicts: review annotation/judge quality and resolve conflicting pairs",
    "decontamination": "Evaluation leakage: remove training items that share n-grams with the evaluation sets",
    "kl": "Model drift: reduce the learning rate, strengthen the KL penalty (raise beta), or train fewer steps",
    "reward_accuracy": "Low reward accuracy: improve data quality (larger preference gap), increase model capacity",
    "reward_overfit": "Reward overfitting: add regularization (weight decay, fewer epochs) and more diverse data",
    "margin": "Preference not learned: check the pairs' gap and the loss settings (beta, learning rate, steps)",
    "entropy_low": "Entropy collapse: reduce the reward scale, add an entropy bonus",
    "entropy_high": "Entropy too high: lower the sampling temperature or learning rate; check the reward signal",
    "capability": "Capability loss: roll back, adjust hyperparameters (lower LR, fewer steps), add capability data",
    "perplexity": "High validation perplexity: improve SFT data quality or train longer",
    "baseline": "Baseline not recorded: run the stage-1 benchmarks so later stages can detect regression",
    "reference": "Reference model missing or log-probs invalid: check the stage-1 model loads and the pairs tokenize",
    "init_kl": "Policy differs from the reference at init: start the policy from the exact stage-1 weights",
    "iteration": "Iteration record incomplete: every round must say whether it continued or why it stopped",
    "text": "Bad rows in the pairs: fix generation or filtering so every row has prompt, chosen and rejected text",
    "scores": "Scores must be on a 0-1 scale with chosen >= rejected: check the scorer's output parsing",
    "verifiability": "Low verifiability: redesign tasks so answers are objectively checkable (exact/numeric answers)",
    "false_positive": "Verifier accepts wrong answers: make the check stricter (exact match, normalisation, tests)",
    "coverage": (
        "Little GRPO signal: tasks are all solved or all failed; sample more per task (generation.n), raise the "
        "temperature, or choose tasks nearer the model's level"
    ),
    "verified_rate": (
        "Verified rate not improving: check the verifier's reward, lower the learning rate or raise the steps, "
        "and check coverage (stage 4)"
    ),
    "citation": "Low citation accuracy: filter sources, require quoted evidence, drop unverifiable claims",
    "factuality": "Low factuality: add more cited, verified training data or train longer on it",
    "hallucination": "Hallucination rate too high: add abstention ('I don't know') examples and factuality data",
    "calibration": "Miscalibrated confidence: add calibration data (confidence matched to correctness)",
    "quality": "Low quality score: filter or rewrite low-scoring examples",
}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _band_text(band: TierBand) -> str:
    op = ">=" if band.direction == "higher" else "<="
    return f"{op} {_fmt(band.high)} HIGH, {op} {_fmt(band.medium)} MEDIUM"


def metric_check(
    column: str,
    *,
    remedy: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
    strict_max: bool = False,
    band: TierBand | None = None,
    band_name: str | None = None,
    metric: str | None = None,
) -> gxe.Expectation:
    """An expectation on a column's mean (the value itself on a one-row metric table).

    With `band`, the pass/fail bound is the band's REJECT boundary and the tier of a
    passing value comes from the band (HIGH or MEDIUM).
    """
    if band is not None:
        if band.direction == "higher":
            minimum = band.medium
        else:
            maximum = band.medium
        bounds = _band_text(band)
    else:
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if strict_min else '>='} {_fmt(minimum)}")
        if maximum is not None:
            parts.append(f"{'<' if strict_max else '<='} {_fmt(maximum)}")
        bounds = " and ".join(parts)
    # Non-strict bounds get FLOAT_SLACK so float noise cannot fail a value equal to the threshold.
    return gxe.ExpectColumnMeanToBeBetween(
        column=column,
        min_value=None if minimum is None else minimum - (0 if strict_min else FLOAT_SLACK),
        max_value=None if maximum is None else maximum + (0 if strict_max else FLOAT_SLACK),
        strict_min=strict_min,
        strict_max=strict_max,
        meta={"metric": metric or column, "bounds": bounds, "remedy": remedy, "band": band_name},
    )


def row_check(expectation: gxe.Expectation, metric: str, bounds: str, remedy: str) -> gxe.Expectation:
    """Attach the reporting meta to a per-row (map) or table-level expectation."""
    expectation.meta = {"metric": metric, "bounds": bounds, "remedy": remedy, "band": None}
    return expectation


def build_suite(name: str, expectations: Sequence[gxe.Expectation]) -> gx.ExpectationSuite:
    gx_context()  # GX refuses to build a suite without an active context
    suite = gx.ExpectationSuite(name=name)
    for order, e in enumerate(expectations):
        e.meta = {**(e.meta or {}), "order": order}
        suite.add_expectation(e)
    return suite


def one_row_check(metric_name: str) -> gxe.Expectation:
    return row_check(
        gxe.ExpectTableRowCountToEqual(value=1),
        "rows",
        "exactly 1 (a metric table)",
        f"{metric_name}: write one row of metrics",
    )
