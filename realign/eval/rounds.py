"""Stage 6's decisions: go on with another on-policy round or stop, and which round's model is the best.

Every workflow repeats its stages 2-5 while its target metric improves; these rules are the same for all.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

DECISIONS = ("continue", "stop_no_improvement", "stop_max_rounds", "stop_kl_limit")


class RoundScore(BaseModel):
    """One round's measurement (round 0: the stage-1 model) and, once decided, what happens next."""

    round: int = Field(description="0 for the stage-1 model, then 1, 2, ...")
    model_dir: str = Field(description="The round's trained model.")
    target_metric: float = Field(description="Exact-match accuracy on the dev (or target) set.")
    split: str = Field(description="Which evaluation set target_metric is measured on.")
    kl_from_start: float = Field(
        math.nan, description="Mean per-token KL(round model || stage-1 model) on the probe; NaN: not measured."
    )
    decision: str = Field("", description="One of DECISIONS once decided; empty for round 0.")
    reason: str = Field("", description="Why, in words.")
    seconds: float = Field(0.0, description="Compute time of the measurement.")


def decide(
    history: list[RoundScore],
    baseline: float,
    epsilon: float,
    max_rounds: int,
    max_kl: float = math.inf,
    training_stop: str = "",
) -> tuple[str, str]:
    """(decision, reason) after the last round in `history`; baseline is the metric before round 1.

    Rounds stop when training itself stopped on its KL limit (`training_stop` says why), when the model has
    drifted more than max_kl from the stage-1 model (the final KL gate would reject it), when the target
    metric stops improving by epsilon, or at max_rounds.
    """
    last = history[-1]
    if training_stop:
        return "stop_kl_limit", training_stop
    if math.isnan(last.kl_from_start) and max_kl != math.inf:
        return (
            "stop_kl_limit",
            f"round {last.round}: KL from the stage-1 model was not measured, so the budget cannot be checked",
        )
    if last.kl_from_start > max_kl:
        return (
            "stop_kl_limit",
            f"round {last.round} drifted {last.kl_from_start:.4f} > {max_kl} (KL from the stage-1 model)",
        )
    before = history[-2].target_metric if len(history) > 1 else baseline
    delta = last.target_metric - before
    if delta < epsilon:
        return (
            "stop_no_improvement",
            f"round {last.round} changed {last.split} accuracy by {delta:+.3f} < epsilon {epsilon}",
        )
    if last.round >= max_rounds:
        return (
            "stop_max_rounds",
            f"improved by {delta:+.3f} >= {epsilon}, but round {last.round} is the last of {max_rounds}",
        )
    return "continue", f"improved by {delta:+.3f} >= epsilon {epsilon}"


def best_round(history: list[RoundScore], max_kl: float = math.inf) -> RoundScore | None:
    """The most accurate round within the KL budget (the earlier one on ties); None when every round drifted too far."""
    within = [s for s in history if s.kl_from_start <= max_kl]
    return max(within, key=lambda s: (s.target_metric, -s.round)) if within else None


def rounds_table(history: list[RoundScore], baseline: float) -> list[dict]:
    """One row per round: its metric, the change from the round before (or the baseline), KL, decision and reason."""
    rows, prev = [], baseline
    for s in history:
        rows.append(
            {
                "round": s.round,
                "target_metric": s.target_metric,
                "delta": s.target_metric - prev,
                "kl_from_start": s.kl_from_start,
                "decision": s.decision,
                "reason": s.reason,
                "model_dir": s.model_dir,
                "split": s.split,
            }
        )
        prev = s.target_metric
    return rows
