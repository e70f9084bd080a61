"""Paired-bootstrap intervals and the verdict's words, against hand-computed cases."""

import numpy as np
import pytest

from realign.eval.verdict import compare, paired_bootstrap_ci, verdict


def test_identical_differences_give_a_degenerate_interval():
    # every item differs by exactly 0.25: every resample's mean is 0.25
    diff, low, high = paired_bootstrap_ci([1.0, 0.5, 0.75], [0.75, 0.25, 0.5])
    assert (diff, low, high) == pytest.approx((0.25, 0.25, 0.25))


def test_two_items_hand_computed():
    # d = [0, 1]: a resample's mean is 0 (p=1/4), 0.5 (p=1/2) or 1 (p=1/4); the 2.5% and 97.5% quantiles are 0 and 1
    diff, low, high = paired_bootstrap_ci([1, 1], [1, 0])
    assert diff == 0.5 and low == 0.0 and high == 1.0


def test_pairing_cancels_what_the_items_share():
    # The items vary a lot, the difference never does: unpaired, the interval would be wide; paired it is a point.
    base = np.linspace(0, 1, 50)
    assert paired_bootstrap_ci(base + 0.1, base)[1:] == pytest.approx((0.1, 0.1))


def test_interval_matches_the_normal_approximation_on_many_items():
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.62, rng.random(2000) < 0.60
    diff, low, high = paired_bootstrap_ci(a, b)
    d = a.astype(float) - b.astype(float)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert diff == pytest.approx(d.mean())
    assert low == pytest.approx(diff - 1.96 * se, abs=0.004) and high == pytest.approx(diff + 1.96 * se, abs=0.004)


def test_seeded_and_checked():
    a, b = [1, 0, 1, 1, 0], [0, 0, 1, 0, 1]
    assert paired_bootstrap_ci(a, b) == paired_bootstrap_ci(a, b)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1, 0], [1])
    with pytest.raises(ValueError, match="equal lengths, got 2 and 3"):
        paired_bootstrap_ci([1, 0], [1, 0, 1])
    assert all(np.isnan(x) for x in paired_bootstrap_ci([], []))


def test_the_demo_case_is_within_noise():
    # 0.620 vs 0.645 on 200 items (the demo's numbers): 124 vs 129 right, most items shared
    after = [1] * 120 + [0] * 5 + [1] * 4 + [0] * 71
    control = [1] * 120 + [1] * 5 + [0] * 4 + [1] * 4 + [0] * 67
    c = compare("reverse_accuracy", "after", after, "control", control)
    assert (c.first_value, c.second_value, c.items) == (0.62, 0.645, 200)
    assert c.within_noise and c.ci_low < 0 < c.ci_high
    assert "within noise" in c.describe()
    before = compare("reverse_accuracy", "after", after, "before", [0] * 200)
    assert not before.within_noise and before.ci_low > 0
    text = verdict("preference optimisation", "reverse", before, c, "continued SFT")
    assert text.startswith("preference optimisation and the control are within noise of each other on reverse")
    assert "did NOT beat" not in text and "0.000 -> 0.620" in text


def test_verdict_says_beat_and_did_not_beat_only_outside_noise():
    better = compare("m", "after", [1] * 100, "control", [0] * 100)
    worse = compare("m", "after", [0] * 100, "control", [1] * 100)
    gain = compare("m", "after", [1] * 100, "before", [0] * 100)
    assert "beat the control" in verdict("DPO", "t", gain, better) and "NOT" not in verdict("DPO", "t", gain, better)
    assert "did NOT beat the control" in verdict("DPO", "t", gain, worse)
    assert verdict("DPO", "t", gain, None).endswith("no control was run")


def test_no_items_is_not_measured_never_a_loss():
    empty = compare("m", "after", [], "control", [])
    assert not empty.measured and not empty.within_noise and "not measured" in empty.describe()
    assert verdict("DPO", "t", compare("m", "after", [], "before", []), empty) == (
        "t accuracy not measured: the target set has no (rated) items"
    )


def test_rounds_judged_on_the_target_itself_is_said():
    gain = compare("m", "after", [1] * 30 + [0] * 70, "before", [0] * 100)
    assert "optimistic" in verdict("DPO", "t", gain, None, chosen_on_target=True)
    assert "optimistic" not in verdict("DPO", "t", gain, None)


def test_reward_hacking_needs_the_reward_up_and_the_accuracy_down_beyond_noise():
    from realign.eval.verdict import reward_hacking

    up = compare("reward_model_score", "after", [0.9] * 50, "before", [0.5] * 50)
    down = compare("reverse_accuracy", "after", [0.0] * 50, "before", [1.0] * 50)
    noisy = compare("reverse_accuracy", "after", [1, 0] * 25, "before", [0, 1] * 25)
    assert reward_hacking(up, down)
    assert not reward_hacking(up, noisy)  # accuracy change within noise
    assert not reward_hacking(down, up)  # reward down, accuracy up: the opposite
    assert not reward_hacking(up, compare("x", "after", [], "before", []))  # not measured


def test_items_a_scorer_could_not_rate_are_left_out_of_both_sides():
    nan = float("nan")
    # item 2 unrated for the first model, item 4 for the second: compared on items 1 and 3 only, paired
    c = compare("t_score", "after", [0.9, nan, 0.5, 0.7], "before", [0.4, 0.8, 0.5, nan])
    assert c.items == 2 and c.first_value == pytest.approx(0.7) and c.second_value == pytest.approx(0.45)
    assert c.difference == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equal lengths"):
        compare("t", "a", [1.0], "b", [1.0, 0.0])
    assert not compare("t", "a", [nan], "b", [1.0]).measured  # nothing rated on both sides: not measured


def test_the_verdict_names_what_the_target_number_is():
    c = compare("t_score", "after", [0.9, 0.8, 0.9], "before", [0.2, 0.3, 0.2])
    said = verdict("preference optimisation", "t", c, None, measure="mean judge rating")
    assert said.startswith("t mean judge rating 0.233 -> 0.867 (+0.633")
