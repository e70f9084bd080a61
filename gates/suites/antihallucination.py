"""Suites of the anti-hallucination workflow: factuality data, citation training, hallucination rate."""

from __future__ import annotations

import great_expectations as gx

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check
from realign.thresholds import ThresholdsConfig


def factuality_data_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 2 (one row): citation accuracy >= min."""
    return build_suite(
        "factuality_data_suite",
        [
            one_row_check("factuality data"),
            metric_check("citation_accuracy", minimum=th.factuality.min_citation_accuracy, remedy=REMEDY["citation"]),
        ],
    )


def citation_training_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 3 (one row): factuality >= min."""
    return build_suite(
        "citation_training_suite",
        [
            one_row_check("citation training"),
            metric_check("factuality", minimum=th.factuality.min_factuality, remedy=REMEDY["factuality"]),
        ],
    )


def hallucination_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 4 (one row): hallucination rate below the max; calibration error tiered."""
    return build_suite(
        "hallucination_suite",
        [
            one_row_check("hallucination detection"),
            metric_check(
                "hallucination_rate",
                maximum=th.factuality.max_hallucination_rate,
                strict_max=True,
                remedy=REMEDY["hallucination"],
            ),
            metric_check(
                "calibration_error",
                band=th.tiers.calibration_error,
                band_name="calibration_error",
                remedy=REMEDY["calibration"],
            ),
        ],
    )
