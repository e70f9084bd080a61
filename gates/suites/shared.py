"""Suites of the stages every workflow has: 1 (SFT baseline), 6 (iteration record), 7 (evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
import great_expectations.expectations as gxe

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check, row_check
from realign.eval.rounds import DECISIONS
from realign.thresholds import ThresholdsConfig


def sft_baseline_suite(th: ThresholdsConfig, benchmarks: Sequence[str] = ()) -> gx.ExpectationSuite:
    """Stage 1: baseline metrics recorded (one row): perplexity below the max, each benchmark accuracy in [0, 1]."""
    checks = [
        one_row_check("baseline"),
        metric_check("perplexity", maximum=th.sft.max_perplexity, strict_max=True, remedy=REMEDY["perplexity"]),
    ]
    for b in benchmarks:
        checks.append(metric_check(b, minimum=0.0, maximum=1.0, remedy=REMEDY["baseline"]))
    return build_suite("sft_baseline_suite", checks)


def iteration_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 6 (one row per round): rounds unique, target metric recorded, each decision known and explained."""
    return build_suite(
        "iteration_suite",
        [
            row_check(gxe.ExpectTableRowCountToBeBetween(min_value=1), "rounds", ">= 1", REMEDY["iteration"]),
            row_check(
                gxe.ExpectColumnValuesToBeUnique(column="round"),
                "round unique",
                "0 repeated rounds",
                REMEDY["iteration"],
            ),
            row_check(
                gxe.ExpectColumnValuesToNotBeNull(column="target_metric"),
                "target_metric recorded",
                "0 null rows",
                REMEDY["iteration"],
            ),
            row_check(
                gxe.ExpectColumnValuesToBeInSet(column="decision", value_set=list(DECISIONS)),
                "decision",
                "one of " + ", ".join(DECISIONS),
                REMEDY["iteration"],
            ),
            row_check(
                gxe.ExpectColumnValueLengthsToBeBetween(column="reason", min_value=1),
                "reason given",
                "0 empty reasons",
                REMEDY["iteration"],
            ),
        ],
    )


def evaluation_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """Stage 7 (one row): capability retention, decontamination, final KL."""
    return build_suite(
        "evaluation_suite",
        [
            one_row_check("evaluation"),
            metric_check(
                "capability_retention", minimum=th.evaluation.min_capability_retention, remedy=REMEDY["capability"]
            ),
            metric_check(
                "decontamination", minimum=th.evaluation.min_decontamination, remedy=REMEDY["decontamination"]
            ),
            metric_check("kl", metric="final_kl", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
        ],
    )
