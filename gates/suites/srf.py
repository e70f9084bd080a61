"""Suites of the SRF workflow (reward model + RL): reward-model training and validation, RL optimization, SFT data
quality. Stage 2 (preference pairs) uses the DPO workflow's suites."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check, row_check
from realign.thresholds import ThresholdsConfig


def reward_model_validation_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SRF stage 4 (one row): validation accuracy >= min, train - val accuracy <= max gap."""
    return build_suite(
        "reward_model_validation_suite",
        [
            one_row_check("reward model validation"),
            metric_check("val_accuracy", minimum=th.reward_model.min_val_accuracy, remedy=REMEDY["reward_accuracy"]),
            metric_check("train_val_gap", maximum=th.reward_model.max_train_val_gap, remedy=REMEDY["reward_overfit"]),
        ],
    )


def rl_optimization_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SRF stage 5 (one row): KL <= max, entropy within [min, max]."""
    o = th.optimization
    return build_suite(
        "rl_optimization_suite",
        [
            one_row_check("RL optimization"),
            metric_check("kl", maximum=o.max_kl, remedy=REMEDY["kl"]),
            metric_check("entropy", metric="entropy (>= min)", minimum=o.min_entropy, remedy=REMEDY["entropy_low"]),
            metric_check("entropy", metric="entropy (<= max)", maximum=o.max_entropy, remedy=REMEDY["entropy_high"]),
        ],
    )


def sft_quality_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SFT/SRF data (row-level): mean quality_score (0-10) tiered."""
    return build_suite(
        "sft_quality_suite",
        [
            row_check(
                gxe.ExpectColumnValuesToBeBetween(column="quality_score", min_value=0, max_value=10),
                "quality_score in [0, 10]",
                "0 rows outside [0, 10]",
                REMEDY["quality"],
            ),
            metric_check(
                "quality_score",
                metric="quality_score (mean)",
                band=th.tiers.quality_score,
                band_name="quality_score",
                remedy=REMEDY["quality"],
            ),
        ],
    )


def reward_model_training_suite(th: ThresholdsConfig) -> gx.ExpectationSuite:
    """SRF stage 3 (one row): the reward model ranks its own training pairs (train accuracy >= min)."""
    return build_suite(
        "reward_model_training_suite",
        [
            one_row_check("reward model training"),
            metric_check("train_accuracy", minimum=th.reward_model.min_accuracy, remedy=REMEDY["reward_accuracy"]),
        ],
    )
