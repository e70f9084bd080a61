"""Suites of the RLVR workflow: verifiable task design, verifier false positives."""

from __future__ import annotations

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
