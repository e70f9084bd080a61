"""Suites of the abliteration workflow: a behaviour to remove (stage 1), a direction that separates it on held-out
prompts (stage 2), weights orthogonal to it that mlx-lm loads (stage 3), and the effect (stage 7): the behaviour
gone beyond noise, capabilities retained, little KL on harmless prompts.

The workflow's own limits (realign.recipes.abliterate.SteeringThresholds) come as the suites' `limits` argument,
from the stage results; the shared ones (retention, KL) from the thresholds table.
"""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx

from gates.suites.expectations import REMEDY, build_suite, metric_check, one_row_check
from realign.recipes.abliterate import SteeringThresholds
from realign.thresholds import ThresholdsConfig

STEER_REMEDY = {
    "behaviour": (
        "No behaviour to remove: the stage-1 model rarely shows it; check data.behaviour_prefixes against its answers "
        "(07/01 answers files), train stage 1 longer, or give prompts that elicit it"
    ),
    "direction": (
        "The direction does not separate held-out prompts: give more (and more contrastive) prompt pairs, or choose "
        "another layer (direction.layer)"
    ),
    "orthogonal": (
        "The orthogonalised weights still write along the direction: check the model is full precision and its "
        "writers are named o_proj / down_proj"
    ),
    "loads": "The abliterated model does not load with mlx_lm.load: see the stage log; re-run the stage",
    "removed": (
        "The behaviour is not gone: the direction is not the one that carries it; try another layer "
        "(direction.layer), more contrastive prompts, or abliteration.embeddings"
    ),
}


def _limits(limits: dict | SteeringThresholds | None) -> SteeringThresholds:
    return limits if isinstance(limits, SteeringThresholds) else SteeringThresholds.model_validate(limits or {})


def behaviour_baseline_suite(
    th: ThresholdsConfig, limits: dict | None = None, benchmarks: Sequence[str] = ()
) -> gx.ExpectationSuite:
    """Stage 1 (one row): the behaviour rate at least the minimum; each benchmark accuracy in [0, 1]."""
    lim = _limits(limits)
    checks = [
        one_row_check("behaviour baseline"),
        metric_check("behaviour_rate", minimum=lim.min_behaviour_rate_before, remedy=STEER_REMEDY["behaviour"]),
    ]
    checks += [metric_check(b, minimum=0.0, maximum=1.0, remedy=REMEDY["baseline"]) for b in benchmarks]
    return build_suite("behaviour_baseline_suite", checks)


def direction_suite(th: ThresholdsConfig, limits: dict | None = None) -> gx.ExpectationSuite:
    """Stage 2 (one row): the chosen layer's held-out accuracy at least the minimum."""
    lim = _limits(limits)
    return build_suite(
        "direction_suite",
        [
            one_row_check("direction"),
            metric_check("heldout_accuracy", minimum=lim.min_direction_accuracy, remedy=STEER_REMEDY["direction"]),
        ],
    )


def abliteration_suite(th: ThresholdsConfig, limits: dict | None = None) -> gx.ExpectationSuite:
    """Stage 3 (one row): the orthogonalised writers' relative projection on the direction (float32, before the cast
    to the model's dtype) at most the float32 tolerance; the saved model loads and its weights are finite."""
    lim = _limits(limits)
    return build_suite(
        "abliteration_suite",
        [
            one_row_check("abliteration"),
            metric_check("loads", minimum=1, remedy=STEER_REMEDY["loads"]),
            metric_check("finite", minimum=1, remedy=STEER_REMEDY["loads"]),
            metric_check("relative_projection", maximum=lim.max_relative_projection, remedy=STEER_REMEDY["orthogonal"]),
        ],
    )


def abliteration_evaluation_suite(
    th: ThresholdsConfig, limits: dict | None = None, kl_on: str = "harmless prompts"
) -> gx.ExpectationSuite:
    """Stage 7 (one row): behaviour rate after at most the max, its drop outside noise (interval's upper end below
    the max), capability retention and KL (on `kl_on`: the prompts it was measured on) within the shared
    thresholds."""
    lim = _limits(limits)
    return build_suite(
        "abliteration_evaluation_suite",
        [
            one_row_check("abliteration evaluation"),
            metric_check("behaviour_rate_after", maximum=lim.max_behaviour_rate_after, remedy=STEER_REMEDY["removed"]),
            metric_check(
                "behaviour_change_ci_high",
                maximum=lim.max_behaviour_change_ci_high,
                strict_max=True,
                remedy=STEER_REMEDY["removed"],
            ),
            metric_check(
                "capability_retention", minimum=th.evaluation.min_capability_retention, remedy=REMEDY["capability"]
            ),
            metric_check("kl", metric=f"kl ({kl_on})", maximum=th.optimization.max_kl, remedy=REMEDY["kl"]),
        ],
    )
