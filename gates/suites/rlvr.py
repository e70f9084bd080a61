"""Suites of the RLVR workflow: verifiable task design, verifier false positives, coverage, GRPO optimisation."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check
from realign.thresholds import ThresholdsConfig


def verifiable_tasks_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """RLVR stage 2 (one row): verifiability tiered."""
    return build_suite(
        "verifiable_tasks_suite",
        [
            one_row_check("verifiable tasks"),
            metric_check(
                "verifiability", band=th.tiers.verifiability, band_name="verifiability", remedy=REMEDY["verifiability"]
            ),
        ],
    )


def verifier_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """RLVR stage 3 (one row): false-positive rate strictly below the max."""
    return build_suite(
        "verifier_suite",
        [
            one_row_check("verifier"),
            metric_check(
                "false_positive_rate",
                maximum=th.verifiable.max_false_positive_rate,
                strict_max=True,
                remedy=REMEDY["false_positive"],
            ),
        ],
    )


def verifiable_data_suite(th: ThresholdsConfig, categories: Sequence[str] = ("all",)) -> gx.ExpectationSuite:
    """RLVR stage 4 (one row): coverage (tasks with a right and a wrong sample) >= min, overall and per category."""
    return build_suite(
        "verifiable_data_suite",
        [one_row_check("verifiable data")]
        + [
            metric_check(f"coverage_{c}", minimum=th.verifiable.min_coverage, remedy=REMEDY["coverage"])
            for c in categories
        ],
    )


def rlvr_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """RLVR stage 5 (one row): KL <= max; held-out verified rate after - before >= min gain."""
    return build_suite(
        "rlvr_optimization_suite",
        [
            one_row_check("RLVR optimization"),
            metric_check("kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
            metric_check(
                "verified_rate_gain", minimum=th.verifiable.min_verified_rate_gain, remedy=REMEDY["verified_rate"]
            ),
        ],
    )
