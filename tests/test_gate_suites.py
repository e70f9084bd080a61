"""Each DPO-workflow suite on good and bad frames: exactly which expectations fail, and the tiers."""

from __future__ import annotations

import pandas as pd
import pytest

from gates.cli import SUITES
from gates.suites.antihallucination import hallucination_suite
from gates.suites.dpo import (
    dpo_optimization_suite,
    preference_metrics_suite,
    preference_pairs_suite,
    reward_model_suite,
)
from gates.suites.shared import iteration_suite, sft_baseline_suite
from gates.validate import evaluate
from realign.thresholds import ThresholdsConfig

TH = ThresholdsConfig.model_validate({"preference": {"min_pairs": 4}})


def failing(report) -> list[str]:
    return [o.metric for o in report.outcomes if not o.success]


def one(**metrics) -> pd.DataFrame:
    return pd.DataFrame({k: [v] for k, v in metrics.items()})


def pairs(chosen_scores, rejected_scores, **overrides) -> pd.DataFrame:
    n = len(chosen_scores)
    df = pd.DataFrame(
        {
            "prompt": [f"q{i}" for i in range(n)],
            "chosen": [f"good {i}" for i in range(n)],
            "rejected": [f"bad {i}" for i in range(n)],
            "chosen_score": chosen_scores,
            "rejected_score": rejected_scores,
        }
    )
    for col, (idx, value) in overrides.items():
        df.loc[idx, col] = value
    return df


def test_good_pairs_are_high():
    r = evaluate("2", {preference_pairs_suite: pairs([0.9, 0.8, 0.7, 1.0], [0.5, 0.5, 0.5, 0.6])}, TH)
    assert r.tier == "HIGH" and failing(r) == []
    assert len(r.outcomes) == 12 and r.rows == {"preference_pairs": 4}


def test_bad_pairs_fail_exactly_the_broken_expectations():
    df = pairs([0.9, 0.8, 0.7, 1.0], [0.5, 0.5, 0.5, 0.6], chosen=(1, ""), rejected=(2, "good 2"))
    df.loc[3, "prompt"] = None
    df.loc[0, "rejected_score"] = -0.2
    r = evaluate("2", {preference_pairs_suite: df}, TH)
    # gap = 0.9 - (-0.2) = 1.1 is outside [0, 1] too
    assert failing(r) == [
        "prompt present",
        "chosen non-empty",
        "chosen != rejected",
        "rejected_score in [0, 1]",
        "gap in [0, 1]",
    ]
    assert r.tier == "REJECT"
    prompt = next(o for o in r.outcomes if o.metric == "prompt present")
    assert prompt.observed == 1 and prompt.detail.startswith("1 of 4 rows fail")


def test_too_few_pairs_and_missing_columns_are_rejected_not_crashed():
    r = evaluate("2", {preference_pairs_suite: pairs([0.9], [0.5])}, TH)
    assert failing(r) == ["pairs"]
    r = evaluate("2", {preference_pairs_suite: pd.DataFrame({"prompt": ["p"] * 5, "chosen": ["a"] * 5})}, TH)
    assert r.tier == "REJECT"
    missing = next(o for o in r.outcomes if o.metric == "rejected present")
    assert not missing.success and missing.observed is None


@pytest.mark.parametrize("gap,tier", [(0.15, "HIGH"), (0.1499, "MEDIUM"), (0.10, "MEDIUM"), (0.0999, "REJECT")])
def test_preference_gap_boundaries(gap, tier):
    r = evaluate("2", {preference_pairs_suite: pairs([0.5 + gap] * 4, [0.5] * 4)}, TH)
    outcome = next(o for o in r.outcomes if o.metric == "preference_gap (mean)")
    assert (outcome.tier, r.tier) == (tier, tier)
    assert outcome.observed == pytest.approx(gap)


@pytest.mark.parametrize("ece,tier", [(0.10, "HIGH"), (0.1001, "MEDIUM"), (0.15, "MEDIUM"), (0.1501, "REJECT")])
def test_calibration_error_boundaries(ece, tier):
    r = evaluate("4", {hallucination_suite: one(hallucination_rate=0.05, calibration_error=ece)}, TH)
    assert r.tier == tier
    assert next(o for o in r.outcomes if o.metric == "calibration_error").tier == tier


@pytest.mark.parametrize(
    "suite,good,bad,expected_failures",
    [
        ("sft_baseline", dict(perplexity=12.0), dict(perplexity=20.0), ["perplexity"]),
        (
            "preference_metrics",
            dict(agreement_rate=0.95, decontamination=0.97),
            dict(agreement_rate=0.79, decontamination=0.89),
            ["agreement_rate", "decontamination"],
        ),
        (
            "reference",
            dict(reference_present=True, ref_logps_finite_fraction=1.0, init_kl=0.0),
            dict(reference_present=False, ref_logps_finite_fraction=0.99, init_kl=1e-6),
            ["reference_present", "ref_logps_finite_fraction", "init_kl"],
        ),
        ("reward_model", dict(accuracy=0.70), dict(accuracy=0.69), ["reward_accuracy"]),
        (
            "dpo_optimization",
            dict(kl=0.1, reward_accuracy=0.8, reward_margin=0.3),
            dict(kl=0.1001, reward_accuracy=0.6, reward_margin=0.0),
            ["kl", "reward_accuracy", "reward_margin"],
        ),
        (
            "grounding_optimization",
            dict(kl=0.1, factuality_gain_ci_high=0.0, hallucination_change_ci_low=0.0),
            dict(kl=0.11, factuality_gain_ci_high=-0.01, hallucination_change_ci_low=0.01),
            ["kl", "factuality_gain_ci_high", "hallucination_change_ci_low"],
        ),
        ("citation_training", dict(factuality=0.90), dict(factuality=0.8999), ["factuality"]),
        ("factuality_data", dict(citation_accuracy=0.85), dict(citation_accuracy=0.8499), ["citation_accuracy"]),
        (
            "evaluation",
            dict(capability_retention=0.95, decontamination=0.9, kl=0.05),
            dict(capability_retention=0.94, decontamination=0.95, kl=0.2),
            ["capability_retention", "final_kl"],
        ),
    ],
)
def test_dpo_metric_suites(suite, good, bad, expected_failures):
    ok = evaluate("s", {SUITES[suite]: one(**good)}, TH)
    assert ok.tier == "HIGH", ok.failure_message()
    ko = evaluate("s", {SUITES[suite]: one(**bad)}, TH)
    assert failing(ko) == expected_failures and ko.tier == "REJECT"


@pytest.mark.parametrize("ece,tier", [(0.10, "HIGH"), (0.1001, "MEDIUM"), (0.15, "MEDIUM"), (0.1501, "REJECT")])
def test_final_calibration_is_tiered(ece, tier):
    r = evaluate("7", {SUITES["calibration"]: one(calibration_error=ece)}, TH)
    assert r.tier == tier
    if tier == "REJECT":
        assert "calibration_error" in r.failure_message() and "calibration data" in r.failure_message()


def test_metric_that_could_not_be_computed_rejects():
    r = evaluate("5", {dpo_optimization_suite: one(kl=float("nan"), reward_accuracy=0.9, reward_margin=0.1)}, TH)
    kl = next(o for o in r.outcomes if o.metric == "kl")
    assert (kl.success, kl.observed, kl.tier) == (False, None, "REJECT")
    assert "kl = not computed" in r.failure_message()


def test_metric_tables_must_have_one_row():
    r = evaluate("4", {reward_model_suite: pd.DataFrame({"accuracy": [0.9, 0.1]})}, TH)
    assert failing(r) == ["rows", "reward_accuracy"]  # and the mean of the two rows (0.5) is below 0.7


def test_iteration_suite():
    good = pd.DataFrame(
        {
            "round": [1, 2],
            "target_metric": [0.4, 0.41],
            "decision": ["continue", "stop_no_improvement"],
            "reason": ["improved by 0.10 >= 0.01", "improved by 0.01 < 0.02"],
        }
    )
    assert evaluate("6", {iteration_suite: good}, TH).tier == "HIGH"
    bad = good.assign(round=[1, 1], decision=["continue", "gave up"], reason=["x", ""])
    assert failing(evaluate("6", {iteration_suite: bad}, TH)) == ["round unique", "decision", "reason given"]


def test_sft_baseline_checks_named_benchmarks():
    r = evaluate(
        "1",
        {sft_baseline_suite: one(perplexity=9.0, target_accuracy=0.02, benchmark_accuracy=1.2)},
        TH,
        suite_kwargs={"sft_baseline": {"benchmarks": ["target_accuracy", "benchmark_accuracy"]}},
    )
    assert failing(r) == ["benchmark_accuracy"]


def test_thresholds_come_from_config_not_code():
    strict = ThresholdsConfig.model_validate({"optimization": {"max_kl": 0.01}})
    frame = {dpo_optimization_suite: one(kl=0.05, reward_accuracy=0.9, reward_margin=0.1)}
    assert evaluate("5", frame, TH).tier == "HIGH"
    assert failing(evaluate("5", frame, strict)) == ["kl"]


def test_every_suite_is_named_after_its_dataset():
    for name, build in SUITES.items():
        assert build.__name__ == f"{name}_suite"
        assert build(TH).name == f"{name}_suite"


def test_worst_tier_wins_across_suites():
    r = evaluate(
        "2",
        {
            preference_pairs_suite: pairs([0.62] * 4, [0.5] * 4),
            preference_metrics_suite: one(agreement_rate=0.5, decontamination=0.95),
        },
        TH,
    )
    assert [o.tier for o in r.outcomes if o.tier != "HIGH"] == ["MEDIUM", "REJECT"] and r.tier == "REJECT"


def test_headline_names_every_metric_that_is_not_high():
    th = ThresholdsConfig.model_validate({"reward_model": {"min_accuracy": 0.7}})
    bad = evaluate("4-preference-modeling", {reward_model_suite: pd.DataFrame({"accuracy": [0.55]})}, th)
    # the failing metric first, so a card cut short still names it in full
    assert bad.headline() == "REJECT: reward_accuracy = 0.55 (needs >= 0.7) · gate 4-preference-modeling"
    good = evaluate("4-preference-modeling", {reward_model_suite: pd.DataFrame({"accuracy": [0.9]})}, th)
    assert good.headline() == "HIGH: 2 checks passed · gate 4-preference-modeling"


def test_reports_escape_markdown_and_round_for_display_only():
    from gates.report import md_escape

    assert md_escape(">= 0.15 HIGH | a_b *c* [d]") == "\\>= 0.15 HIGH \\| a\\_b \\*c\\* \\[d\\]"
    assert md_escape("- x") == "\\- x" and md_escape("1. x") == "1\\. x" and md_escape("1.5") == "1.5"
    assert md_escape("-3") == "-3" and md_escape("two\nlines") == "two lines"
    th = ThresholdsConfig.model_validate({"reward_model": {"min_accuracy": 0.7}})
    r = evaluate("4-preference-modeling", {reward_model_suite: pd.DataFrame({"accuracy": [0.8268333333333334]})}, th)
    row = next(row for row in r.table_rows() if row["metric"] == "reward\\_accuracy")
    assert list(row)[:5] == ["metric", "value", "threshold", "tier", "remedy"]
    assert row["value"] == "0.8268" and row["threshold"] == "\\>= 0.7"
    assert "| reward\\_accuracy | 0.8268 | \\>= 0.7 | HIGH |" in r.markdown()
    assert r.model_dump()["outcomes"][-1]["observed"] == 0.8268333333333334  # the JSON keeps full precision
