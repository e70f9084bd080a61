"""Best-vs-worst pair building: gap filter, agreement, dedupe, decontamination, counts."""

import math

import pytest

from realign.data.pairs import build_pairs
from realign.eval.probes import win_rate
from realign.score.verifiers import positional_match


def test_best_vs_worst_with_counts():
    prompts = ["Reverse: 123", "Reverse: 456", "Reverse: 789", "Reverse: 111"]
    comps = [["321", "123", "311"], ["654", "655", "654"], ["987", "987", "987"], ["x", "111", "11"]]
    graded = [[positional_match(c, a) for c in cs] for cs, a in zip(comps, ["321", "654", "987", "111"])]
    exact = [[float(c == a) for c in cs] for cs, a in zip(comps, ["321", "654", "987", "111"])]
    pairs, stats = build_pairs(prompts, comps, graded, exact, min_gap=0.15)
    # prompt 1: best 654 (1.0) vs worst 655 (2/3): gap 1/3; prompt 2: all equal -> no gap; prompt 3: 111 vs x
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("321", "123"), ("654", "655"), ("111", "x")]
    assert pairs[1]["gap"] == pytest.approx(1 / 3)
    assert stats.no_gap == 1 and stats.pairs == 3 and stats.candidates == 12
    assert stats.preference_gap == pytest.approx((2 / 3 + 1 / 3 + 1.0) / 3)
    assert stats.agreement_rate == 1.0


def test_agreement_counts_ties_of_the_second_judgement_as_disagreement():
    pairs, stats = build_pairs(
        ["q1", "q2"], [["ab", "zz"], ["ax", "zz"]], [[1.0, 0.0], [0.5, 0.0]], [[1.0, 0.0], [0.0, 0.0]], min_gap=0.15
    )
    assert stats.pairs == 2 and stats.agreement_rate == 0.5


def test_unscored_candidates_are_excluded_and_counted():
    pairs, stats = build_pairs(["q"], [["a", "b", "c"]], [[float("nan"), 0.9, 0.1]], None, min_gap=0.15)
    assert stats.unscored == 1 and pairs[0]["chosen"] == "b" and math.isnan(stats.agreement_rate)


def test_decontamination_drops_pairs_overlapping_eval_items():
    prompts = ["Reverse: 12345", "Reverse: 999"]
    pairs, stats = build_pairs(
        prompts,
        [["54321", "1"], ["999", "1"]],
        [[1.0, 0.0], [1.0, 0.0]],
        None,
        min_gap=0.15,
        eval_texts=["Reverse: 12345", "Copy: 55"],
    )
    assert [p["prompt"] for p in pairs] == ["Reverse: 999"] and stats.contaminated == 1
    assert stats.decontamination == 1.0


def test_duplicates_and_identical_texts():
    pairs, stats = build_pairs(
        ["q", "q", "r"], [["a", "b"], ["a", "b"], ["c ", "c"]], [[1, 0], [1, 0], [1, 0]], None, min_gap=0.1
    )
    assert stats.duplicates == 1 and stats.identical == 1 and stats.pairs == 1


def test_graded_score_and_win_rate():
    assert positional_match("54321", "54321") == 1.0
    assert positional_match("54311", "54321") == 0.8
    assert positional_match("543", "54321") == 0.6
    assert positional_match("", "12") == 0.0
    assert win_rate([1.0, 0.5, 0.2], [0.5, 0.5, 0.9]) == pytest.approx((1 + 0.5) / 3)


def test_blank_completions_are_excluded_and_counted():
    pairs, stats = build_pairs(["q"], [["", "good", "bad"]], [[0.0, 1.0, 0.5]], None, min_gap=0.15)
    assert stats.blank == 1 and pairs[0]["rejected"] == "bad"


def test_edit_similarity():
    from realign.score.verifiers import edit_similarity

    assert edit_similarity("54321", "54321") == 1.0
    assert edit_similarity("4321", "54321") == pytest.approx(0.8)  # one deletion; positional match gives 0.0
    assert positional_match("4321", "54321") == 0.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0 and edit_similarity("", "ab") == 0.0


def test_given_pairs_are_checked_by_the_scorer_and_agreement_counts_every_scored_pair():
    from realign.data.pairs import GivenPairs, given_pairs

    nan = float("nan")
    given = GivenPairs(
        prompts=["q1", "q2", "q3", "q4", "q1"],
        chosen=["a", "b", "c", "d", "a"],
        rejected=["x", "y", "z", "w", "x"],
        chosen_scores=[0.9, 0.5, 0.2, nan, 0.8],
        rejected_scores=[0.1, 0.45, 0.6, 0.3, 0.3],
    )
    pairs, stats = given_pairs(given, min_gap=0.15)
    # q1 kept (gap 0.8); q2 gap 0.05 < 0.15 dropped; q3 the scorer prefers the rejected answer, dropped; q4 unscored;
    # the second q1 row repeats the first pair (a duplicate, gap 0.5)
    assert [(p["prompt"], p["gap"]) for p in pairs] == [("q1", pytest.approx(0.8))]
    assert (stats.given, stats.no_gap, stats.unscored, stats.duplicates, stats.pairs) == (5, 2, 1, 1, 1)
    # scored pairs: q1 +1, q2 +1, q3 -1, q1 +1 -> the scorer ranks 3 of 4 as labelled
    assert stats.agreement_rate == pytest.approx(3 / 4)
    assert stats.preference_gap == pytest.approx(0.8) and stats.candidates == 10


def test_given_pairs_top_up_with_generated_pairs():
    from realign.data.pairs import GivenPairs

    given = GivenPairs(["q1"], ["a"], ["x"], [1.0], [0.0])
    pairs, stats = build_pairs(
        ["q2"], [["ok", "no"]], [[0.75, 0.25]], [[1.0, 0.0]], min_gap=0.15, given=given, eval_texts=["q1 a x"], ngram=3
    )
    # the given pair overlaps the evaluation item and is dropped; the generated one stays
    assert [p["prompt"] for p in pairs] == ["q2"] and (stats.contaminated, stats.given, stats.prompts) == (1, 1, 1)
    assert stats.agreement_rate == 1.0  # the given pair's judgement (+1) and the generated pair's second one (+1)


def test_without_second_scores_a_pairwise_judgement_in_both_orders_gives_the_agreement():
    from realign.data.pairs import GivenPairs

    calls = []

    def pairwise(prompts, first, second):
        calls.append((prompts, first, second))
        # prefers the longer answer; on q3 always names the second (position bias); cannot decide on q4
        return [
            None if p == "q4" else 1 if p == "q3" or len(b) > len(a) else -1 for p, a, b in zip(prompts, first, second)
        ]

    given = GivenPairs(["g"], ["yes"], ["no"], [1.0], [0.0])
    prompts = ["q1", "q2", "q3", "q4"]
    comps = [["long one", "s"], ["t", "longer"], ["aaa", "b"], ["cc", "d"]]
    scores = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]
    pairs, stats = build_pairs(prompts, comps, scores, None, min_gap=0.15, given=given, second_pairwise=pairwise)
    # asked twice, for the generated pairs only: rejected shown first, then chosen shown first
    chosen, rejected = ["long one", "t", "aaa", "cc"], ["s", "longer", "b", "d"]
    assert calls == [(prompts, rejected, chosen), (prompts, chosen, rejected)]
    # q1: the chosen both times (+1); q2: the rejected both times (-1); q3: the second position both times (0, a
    # tie: position decided); q4: undecided (left out)
    assert [p["agree"] for p in pairs] == [None, 1, -1, 0, None]
    # by hand: the given pair's label agreement (+1), then +1, -1, 0: 2 of 4
    assert stats.agreement_rate == pytest.approx(0.5)
    # with second scores, the pairwise judge is not asked
    calls.clear()
    build_pairs(prompts, comps, scores, scores, min_gap=0.15, second_pairwise=pairwise)
    assert calls == []
