"""Stage 6's rules: when to go on, which round is best, the rounds table."""

import math

from realign.eval.rounds import RoundScore, best_round, decide, rounds_table


def r(n, acc, kl, decision="", reason=""):
    return RoundScore(
        round=n, model_dir=f"m{n}", target_metric=acc, split="dev", kl_from_start=kl, decision=decision, reason=reason
    )


def test_round_decisions():
    assert decide([r(1, 0.60, 0.02)], 0.55, 0.01, 3, 0.1)[0] == "continue"
    assert decide([r(1, 0.60, 0.02), r(2, 0.605, 0.04)], 0.55, 0.01, 3, 0.1)[0] == "stop_no_improvement"
    assert decide([r(1, 0.70, 0.02)], 0.55, 0.01, 1, 0.1)[0] == "stop_max_rounds"
    assert decide([r(1, 0.70, 0.2)], 0.55, 0.01, 3, 0.1)[0] == "stop_kl_limit"
    decision, reason = decide([r(1, 0.70, math.nan)], 0.55, 0.01, 3, 0.1)
    assert decision == "stop_kl_limit" and "not measured" in reason  # an unmeasured KL never passes as 0
    # training itself stopped on its KL limit: that is the reason, whatever the metric did
    assert decide([r(1, 0.9, 0.01)], 0.55, 0.01, 3, 0.1, "KL 0.2 > limit 0.1 at step 7") == (
        "stop_kl_limit",
        "KL 0.2 > limit 0.1 at step 7",
    )


def test_best_round_is_the_most_accurate_within_the_kl_budget():
    history = [r(1, 0.60, 0.02), r(2, 0.70, 0.5), r(3, 0.60, 0.03)]
    assert best_round(history, 0.1).round == 1  # round 2 drifted too far; ties go to the earlier round
    assert best_round(history).round == 2
    assert best_round([r(1, 0.9, 0.5)], 0.1) is None  # nothing within budget: the caller keeps the stage-1 model


def test_rounds_table_deltas_chain_from_the_baseline():
    rows = rounds_table([r(1, 0.60, 0.02, "continue", "up"), r(2, 0.55, 0.04, "stop_no_improvement", "down")], 0.50)
    assert [round(x["delta"], 6) for x in rows] == [0.10, -0.05]
    assert [x["decision"] for x in rows] == ["continue", "stop_no_improvement"]
    assert set(rows[0]) == {
        "round",
        "target_metric",
        "delta",
        "kl_from_start",
        "decision",
        "reason",
        "model_dir",
        "split",
    }
