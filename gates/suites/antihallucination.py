"""Suites of the anti-hallucination workflow: factuality data, citation training, hallucination rate, optimisation
and the final calibration."""

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


def grounding_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 5 (one row): KL <= max; factuality not fallen and hallucinations not risen beyond
    noise: the 95% interval's upper end of the factuality gain >= min, its lower end of the hallucination change
    <= max (the point values are reported beside them)."""
    return build_suite(
        "grounding_optimization_suite",
        [
            one_row_check("grounding optimization"),
            metric_check("kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
            metric_check(
                "factuality_gain_ci_high", minimum=th.factuality.min_factuality_gain, remedy=REMEDY["factuality"]
            ),
            metric_check(
                "hallucination_change_ci_low",
                maximum=th.factuality.max_hallucination_change,
                remedy=REMEDY["hallucination"],
            ),
        ],
    )


def calibration_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Anti-hallucination stage 7 (one row): the final model's calibration error, tiered."""
    return build_suite(
        "calibration_suite",
        [
            one_row_check("calibration"),
            metric_check(
                "calibration_error",
                band=th.tiers.calibration_error,
                band_name="calibration_error",
                remedy=REMEDY["calibration"],
            ),
        ],
    )
