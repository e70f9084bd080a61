"""Suites of the DPO workflow's stages 2-5: pairs, pair metrics, reference, reward model, DPO optimization."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check, row_check
from realign.thresholds import ThresholdsConfig


def preference_pairs_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 2 pairs (row-level): text present and non-empty, chosen != rejected, scores and gap in [0, 1],
    at least `min_pairs` rows, mean gap tiered by the preference_gap band."""
    checks: list[gxe.Expectation] = []
    for col in ("prompt", "chosen", "rejected"):
        checks.append(
            row_check(gxe.ExpectColumnValuesToNotBeNull(column=col), f"{col} present", "0 null rows", REMEDY["text"])
        )
        checks.append(
            row_check(
                gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1),
                f"{col} non-empty",
                "0 empty rows",
                REMEDY["text"],
            )
        )
    checks.append(
        row_check(
            gxe.ExpectColumnValuesToBeInSet(column="chosen_equals_rejected", value_set=[False]),
            "chosen != rejected",
            "0 identical pairs",
            REMEDY["text"],
        )
    )
    for col in ("chosen_score", "rejected_score", "gap"):
        checks.append(
            row_check(
                gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0),
                f"{col} in [0, 1]",
                "0 rows outside [0, 1]",
                REMEDY["scores"],
            )
        )
    checks.append(
        row_check(
            gxe.ExpectTableRowCountToBeBetween(min_value=th.preference.min_pairs),
            "pairs",
            f">= {th.preference.min_pairs}",
            REMEDY["min_pairs"],
        )
    )
    checks.append(
        metric_check(
            "gap",
            metric="preference_gap (mean)",
            band=th.tiers.preference_gap,
            band_name="preference_gap",
            remedy=REMEDY["preference_gap"],
        )
    )
    return build_suite("preference_pairs_suite", checks)


def preference_metrics_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 2 metrics (one row): agreement rate tiered; decontamination >= min."""
    return build_suite(
        "preference_metrics_suite",
        [
            one_row_check("preference metrics"),
            metric_check(
                "agreement_rate",
                band=th.tiers.agreement_rate,
                band_name="agreement_rate",
                remedy=REMEDY["agreement_rate"],
            ),
            metric_check(
                "decontamination", minimum=th.evaluation.min_decontamination, remedy=REMEDY["decontamination"]
            ),
        ],
    )


def reference_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 3 (one row): reference present, cached log-probs all finite, KL(policy || reference) at init ~ 0."""
    return build_suite(
        "reference_suite",
        [
            one_row_check("reference"),
            row_check(
                gxe.ExpectColumnValuesToBeInSet(column="reference_present", value_set=[True]),
                "reference_present",
                "True",
                REMEDY["reference"],
            ),
            metric_check("ref_logps_finite_fraction", minimum=1.0, maximum=1.0, remedy=REMEDY["reference"]),
            metric_check("init_kl", maximum=th.reference.max_init_kl, strict_max=True, remedy=REMEDY["init_kl"]),
        ],
    )


def reward_model_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 4 (one row): held-out reward accuracy >= min."""
    return build_suite(
        "reward_model_suite",
        [
            one_row_check("reward model"),
            metric_check(
                "accuracy",
                metric="reward_accuracy",
                minimum=th.reward_model.min_accuracy,
                remedy=REMEDY["reward_accuracy"],
            ),
        ],
    )


def dpo_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 5 (one row): KL <= max, held-out implicit reward accuracy >= min, reward margin > 0."""
    return build_suite(
        "dpo_optimization_suite",
        [
            one_row_check("optimization"),
            metric_check("kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
            metric_check("reward_accuracy", minimum=th.reward_model.min_accuracy, remedy=REMEDY["reward_accuracy"]),
            metric_check(
                "reward_margin", minimum=th.optimization.min_reward_margin, strict_min=True, remedy=REMEDY["margin"]
            ),
        ],
    )


def add_pair_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The derived columns preference_pairs_suite checks (pure functions of the given columns)."""
    df = df.copy()
    if {"chosen_score", "rejected_score"} <= set(df):
        # Recomputed, never trusted from the file: the gap is defined by the two scores.
        df["gap"] = df["chosen_score"] - df["rejected_score"]
    if {"chosen", "rejected"} <= set(df):
        df["chosen_equals_rejected"] = df["chosen"].astype(str).str.strip() == df["rejected"].astype(str).str.strip()
    return df


# Declared next to the suite it serves: the gate adds these columns before validating.
preference_pairs_suite.prepare = add_pair_columns  # type: ignore[attr-defined]
