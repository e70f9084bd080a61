"""One Great Expectations suite per stage output, built from the thresholds config.

Stage outputs are pandas DataFrames of two kinds:
  - row-level tables (preference pairs, iteration rounds): expectations per row plus aggregates;
  - one-row metric tables (KL, accuracy, ...): one column per metric, checked with
    `expect_column_mean_to_be_between`, whose observed value on one row is the metric itself.

Every expectation carries `meta` saying which metric it checks, the bound(s) in
words, the tier band (if the metric has HIGH/MEDIUM/REJECT tiers) and the remedy
from the seeds' "Common Issues" tables. Adding a suite for a new stage output is
one function here plus one entry in SUITES.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import great_expectations as gx
import great_expectations.expectations as gxe

from gates.context import gx_context
from realign.thresholds import FLOAT_SLACK, ThresholdsConfig, TierBand

# Remedies, from the seeds' "Common Issues" tables (and stage docs where the tables are silent).
REMEDY = {
    "preference_gap": "Weak preference signal: collect more diverse examples, improve prompt quality, or use a stronger scorer",
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


def _suite(name: str, expectations: Sequence[gxe.Expectation]) -> gx.ExpectationSuite:
    gx_context()  # GX refuses to build a suite without an active context
    suite = gx.ExpectationSuite(name=name)
    for order, e in enumerate(expectations):
        e.meta = {**(e.meta or {}), "order": order}
        suite.add_expectation(e)
    return suite


def _one_row(metric_name: str) -> gxe.Expectation:
    return row_check(gxe.ExpectTableRowCountToEqual(value=1), "rows", "exactly 1 (a metric table)", f"{metric_name}: write one row of metrics")


# --- DPO workflow, stages 1-7 ------------------------------------------------------------


def sft_baseline_suite(th: ThresholdsConfig, benchmarks: Sequence[str] = ()) -> gx.ExpectationSuite:
    """Stage 1: baseline metrics recorded (one row): perplexity below the max, each benchmark accuracy in [0, 1]."""
    checks = [_one_row("baseline"), metric_check("perplexity", maximum=th.sft.max_perplexity, strict_max=True, remedy=REMEDY["perplexity"])]
    for b in benchmarks:
        checks.append(metric_check(b, minimum=0.0, maximum=1.0, remedy=REMEDY["baseline"]))
    return _suite("sft_baseline_suite", checks)


def preference_pairs_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 2 pairs (row-level): text present and non-empty, chosen != rejected, scores and gap in [0, 1],
    at least `min_pairs` rows, mean gap tiered by the preference_gap band."""
    checks: list[gxe.Expectation] = []
    for col in ("prompt", "chosen", "rejected"):
        checks.append(row_check(gxe.ExpectColumnValuesToNotBeNull(column=col), f"{col} present", "0 null rows", REMEDY["text"]))
        checks.append(row_check(gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1), f"{col} non-empty", "0 empty rows", REMEDY["text"]))
    checks.append(row_check(gxe.ExpectColumnValuesToBeInSet(column="chosen_equals_rejected", value_set=[False]),
                            "chosen != rejected", "0 identical pairs", REMEDY["text"]))
    for col in ("chosen_score", "rejected_score", "gap"):
        checks.append(row_check(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0),
                                f"{col} in [0, 1]", "0 rows outside [0, 1]", REMEDY["scores"]))
    checks.append(row_check(gxe.ExpectTableRowCountToBeBetween(min_value=th.preference.min_pairs),
                            "pairs", f">= {th.preference.min_pairs}", REMEDY["min_pairs"]))
    checks.append(metric_check("gap", metric="preference_gap (mean)", band=th.tiers.preference_gap, band_name="preference_gap",
                               remedy=REMEDY["preference_gap"]))
    return _suite("preference_pairs_suite", checks)


def preference_metrics_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 2 metrics (one row): agreement rate tiered; decontamination >= min."""
    return _suite("preference_metrics_suite", [
        _one_row("preference metrics"),
        metric_check("agreement_rate", band=th.tiers.agreement_rate, band_name="agreement_rate", remedy=REMEDY["agreement_rate"]),
        metric_check("decontamination", minimum=th.evaluation.min_decontamination, remedy=REMEDY["decontamination"]),
    ])


def reference_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 3 (one row): reference present, cached log-probs all finite, KL(policy || reference) at init ~ 0."""
    return _suite("reference_suite", [
        _one_row("reference"),
        row_check(gxe.ExpectColumnValuesToBeInSet(column="reference_present", value_set=[True]), "reference_present", "True", REMEDY["reference"]),
        metric_check("ref_logps_finite_fraction", minimum=1.0, maximum=1.0, remedy=REMEDY["reference"]),
        metric_check("init_kl", maximum=th.reference.max_init_kl, strict_max=True, remedy=REMEDY["init_kl"]),
    ])


def reward_model_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 4 (one row): held-out reward accuracy >= min."""
    return _suite("reward_model_suite", [
        _one_row("reward model"),
        metric_check("accuracy", metric="reward_accuracy", minimum=th.reward_model.min_accuracy, remedy=REMEDY["reward_accuracy"]),
    ])


def dpo_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 5 (one row): KL <= max, held-out implicit reward accuracy >= min, reward margin > 0."""
    return _suite("dpo_optimization_suite", [
        _one_row("optimization"),
        metric_check("kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
        metric_check("reward_accuracy", minimum=th.reward_model.min_accuracy, remedy=REMEDY["reward_accuracy"]),
        metric_check("reward_margin", minimum=th.optimization.min_reward_margin, strict_min=True, remedy=REMEDY["margin"]),
    ])


ITERATION_DECISIONS = ("continue", "stop_no_improvement", "stop_max_rounds", "stop_kl_limit")


def iteration_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 6 (one row per round): rounds unique, target metric recorded, each decision known and explained."""
    return _suite("iteration_suite", [
        row_check(gxe.ExpectTableRowCountToBeBetween(min_value=1), "rounds", ">= 1", REMEDY["iteration"]),
        row_check(gxe.ExpectColumnValuesToBeUnique(column="round"), "round unique", "0 repeated rounds", REMEDY["iteration"]),
        row_check(gxe.ExpectColumnValuesToNotBeNull(column="target_metric"), "target_metric recorded", "0 null rows", REMEDY["iteration"]),
        row_check(gxe.ExpectColumnValuesToBeInSet(column="decision", value_set=list(ITERATION_DECISIONS)),
                  "decision", "one of " + ", ".join(ITERATION_DECISIONS), REMEDY["iteration"]),
        row_check(gxe.ExpectColumnValueLengthsToBeBetween(column="reason", min_value=1), "reason given", "0 empty reasons", REMEDY["iteration"]),
    ])


def evaluation_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 7 (one row): capability retention, decontamination, final KL."""
    return _suite("evaluation_suite", [
        _one_row("evaluation"),
        metric_check("capability_retention", minimum=th.evaluation.min_capability_retention, remedy=REMEDY["capability"]),
        metric_check("decontamination", minimum=th.evaluation.min_decontamination, remedy=REMEDY["decontamination"]),
        metric_check("kl", metric="final_kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
    ])


# --- other workflows (one function each) --------------------------------------------------


def reward_model_validation_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SRF stage 4 (one row): validation accuracy >= min, train - val accuracy <= max gap."""
    return _suite("reward_model_validation_suite", [
        _one_row("reward model validation"),
        metric_check("val_accuracy", minimum=th.reward_model.min_val_accuracy, remedy=REMEDY["reward_accuracy"]),
        metric_check("train_val_gap", maximum=th.reward_model.max_train_val_gap, remedy=REMEDY["reward_overfit"]),
    ])


def rl_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SRF stage 5 (one row): KL <= max, entropy within [min, max]."""
    o = th.optimization
    return _suite("rl_optimization_suite", [
        _one_row("RL optimization"),
        metric_check("kl", maximum=o.max_kl, remedy=REMEDY["kl"]),
        metric_check("entropy", metric="entropy (>= min)", minimum=o.min_entropy, remedy=REMEDY["entropy_low"]),
        metric_check("entropy", metric="entropy (<= max)", maximum=o.max_entropy, remedy=REMEDY["entropy_high"]),
    ])


def verifiable_tasks_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """RLVR stage 2 (one row): verifiability tiered."""
    return _suite("verifiable_tasks_suite", [
        _one_row("verifiable tasks"),
        metric_check("verifiability", band=th.tiers.verifiability, band_name="verifiability", remedy=REMEDY["verifiability"]),
    ])


def verifier_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """RLVR stage 3 (one row): false-positive rate strictly below the max."""
    return _suite("verifier_suite", [
        _one_row("verifier"),
        metric_check("false_positive_rate", maximum=th.verifiable.max_false_positive_rate, strict_max=True, remedy=REMEDY["false_positive"]),
    ])


def factuality_data_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 2 (one row): citation accuracy >= min."""
    return _suite("factuality_data_suite", [
        _one_row("factuality data"),
        metric_check("citation_accuracy", minimum=th.factuality.min_citation_accuracy, remedy=REMEDY["citation"]),
    ])


def citation_training_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 3 (one row): factuality >= min."""
    return _suite("citation_training_suite", [
        _one_row("citation training"),
        metric_check("factuality", minimum=th.factuality.min_factuality, remedy=REMEDY["factuality"]),
    ])


def hallucination_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 4 (one row): hallucination rate below the max; calibration error tiered."""
    return _suite("hallucination_suite", [
        _one_row("hallucination detection"),
        metric_check("hallucination_rate", maximum=th.factuality.max_hallucination_rate, strict_max=True, remedy=REMEDY["hallucination"]),
        metric_check("calibration_error", band=th.tiers.calibration_error, band_name="calibration_error", remedy=REMEDY["calibration"]),
    ])


def sft_quality_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SFT/SRF data (row-level): mean quality_score (0-10) tiered."""
    return _suite("sft_quality_suite", [
        row_check(gxe.ExpectColumnValuesToBeBetween(column="quality_score", min_value=0, max_value=10),
                  "quality_score in [0, 10]", "0 rows outside [0, 10]", REMEDY["quality"]),
        metric_check("quality_score", metric="quality_score (mean)", band=th.tiers.quality_score, band_name="quality_score", remedy=REMEDY["quality"]),
    ])


SUITES: dict[str, Callable[..., gx.ExpectationSuite]] = {
    "sft_baseline": sft_baseline_suite,
    "preference_pairs": preference_pairs_suite,
    "preference_metrics": preference_metrics_suite,
    "reference": reference_suite,
    "reward_model": reward_model_suite,
    "dpo_optimization": dpo_optimization_suite,
    "iteration": iteration_suite,
    "evaluation": evaluation_suite,
    "reward_model_validation": reward_model_validation_suite,
    "rl_optimization": rl_optimization_suite,
    "verifiable_tasks": verifiable_tasks_suite,
    "verifier": verifier_suite,
    "factuality_data": factuality_data_suite,
    "citation_training": citation_training_suite,
    "hallucination": hallucination_suite,
    "sft_quality": sft_quality_suite,
}


def prepare_frame(name: str, df):
    """Add the derived columns a suite checks (pure functions of the given columns)."""
    if name == "preference_pairs":
        df = df.copy()
        if {"chosen_score", "rejected_score"} <= set(df):
            # Recomputed, never trusted from the file: the gap is defined by the two scores.
            df["gap"] = df["chosen_score"] - df["rejected_score"]
        if {"chosen", "rejected"} <= set(df):
            df["chosen_equals_rejected"] = df["chosen"].astype(str).str.strip() == df["rejected"].astype(str).str.strip()
    return df
