"""Grounded QA: the synthetic world, row checks, output parsing, and every metric against hand-computed values."""

from __future__ import annotations

import pytest

from realign.data.grounded import (
    ABSTAIN,
    GroundedItem,
    Passage,
    grounded_items,
    item_problems,
    parse_output,
    supporting_ids,
    world,
)
from realign.eval.grounding import grounded_metrics, judged_flags
from realign.eval.metrics import calibration_bins, expected_calibration_error

P = (Passage("1", "Bako's pet is fish."), Passage("2", "Zeti's color is red."))
ANS = GroundedItem("What is Bako's pet?", P, "fish", ("1",))
UNANS = GroundedItem("What is Bako's city?", P, ABSTAIN)


def test_targets_and_prompts():
    assert ANS.target() == "fish [1]" and UNANS.target() == ABSTAIN
    assert ANS.prompt() == "Sources: [1] Bako's pet is fish. [2] Zeti's color is red.\nQuestion: What is Bako's pet?"


def test_parse_output():
    assert parse_output("fish [1]") == ("fish", ("1",), False)
    assert parse_output("fish [1] [2].") == ("fish", ("1", "2"), False)
    assert parse_output("I don't know") == ("", (), True)
    assert parse_output("red") == ("red", (), False)


def test_row_problems_are_phrased_for_line_errors():
    assert item_problems("q", P, "fish", ["1"], ABSTAIN) == []
    assert "unknown passage id '9'" in item_problems("q", P, "fish", ["9"], ABSTAIN)[0]
    assert "is in no passage" in item_problems("q", P, "teal", [], ABSTAIN)[0]
    assert "passages is empty" in item_problems("q", (), ABSTAIN, [], ABSTAIN)[0]
    dup = (Passage("1", "a"), Passage("1", "b"))
    assert "appears twice" in item_problems("q", dup, ABSTAIN, [], ABSTAIN)[0]
    assert supporting_ids(P, "FISH") == ("1",) and supporting_ids(P, "fis") == ()


def test_the_world_makes_answerable_and_unanswerable_items_with_checked_citations():
    people = world(30, seed=1)
    items = grounded_items(people, 200, seed=2, unanswerable=0.3)
    unans = [i for i in items if not i.answerable]
    assert 40 <= len(unans) <= 80
    for i in items:
        assert item_problems(i.question, i.passages, i.answer, i.citations, ABSTAIN) == []
        if i.answerable:
            assert i.citations and all(i.answer in p.text for p in i.passages if p.id in i.citations)
        else:  # nothing about the asked person and attribute is shown
            who, attr = i.question[8:-1].split("'s ")
            assert not any(p.text.startswith(f"{who}'s {attr} ") for p in i.passages)


def test_metrics_by_hand():
    a2 = GroundedItem("What is Zeti's color?", P, "red", ("2",))
    items = [ANS, a2, ANS, UNANS, UNANS]
    outputs = [
        "fish [1]",  # right, cited right
        "red [1]",  # right answer, wrong citation
        "blue",  # wrong, supported by no passage: hallucinated
        "I don't know",  # right abstention
        "fish [1]",  # answered an unanswerable one: hallucinated
    ]
    m = grounded_metrics(items, outputs)
    assert m["factuality"] == pytest.approx(2 / 3)  # 2 of 3 answerable right
    assert m["citation_accuracy"] == pytest.approx(1 / 2)  # of the 2 right answers, 1 cited right
    assert m["hallucination_rate"] == pytest.approx(2 / 5)
    assert m["abstention_precision"] == 1.0 and m["abstention_recall"] == 0.5
    assert m["accuracy"] == pytest.approx(3 / 5)
    flags = judged_flags(items, outputs)  # per item, for the paired comparisons of stage 7
    assert flags["answered_right"] == [True, True, False, False, False]  # answerable items answered right
    assert flags["cited_ok"] == [True, False, False, False, False]
    assert flags["hallucinated"] == [False, False, True, False, True]
    assert flags["correct"] == [True, True, False, True, False]


def test_ece_binning_spelled_out():
    # 10 equal-width bins, bin b = (b/10, (b+1)/10], 0 in bin 0:
    # bin 0: {0.05: wrong} -> |0 - 0.05| * 1/5; bin 1: {0.15 right, 0.15 wrong} -> |0.5 - 0.15| * 2/5;
    # bin 9: {0.95, 1.0 both right} -> |1 - 0.975| * 2/5; total 0.01 + 0.14 + 0.01 = 0.16
    conf, correct = [0.05, 0.15, 0.15, 0.95, 1.0], [False, True, False, True, True]
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.16)
    bins = calibration_bins([0.0, 0.1, 0.1000001, 1.0], [True] * 4, n_bins=10)
    assert [(b["low"], b["count"]) for b in bins] == [(0.0, 2), (0.1, 1), (0.9, 1)]
    assert expected_calibration_error([], []) != expected_calibration_error([], [])  # NaN
    assert expected_calibration_error([0.9, 0.9, 0.2, 0.2], [True, False, False, False]) == pytest.approx(0.3)


def test_validate_reports_grounded_rows_line_by_line(tmp_path):
    import json

    from conftest import run_cli

    good = {
        "question": "What is Bako's pet?",
        "passages": [{"id": "1", "text": "Bako's pet is fish."}],
        "answer": "fish",
    }
    rows = [
        good,
        {**good, "citations": ["7"]},
        {**good, "answer": "teal"},
        {**good, "passages": []},
        {**good, "answer": "I don't know"},
    ]
    src = tmp_path / "g.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("validate", str(src), "--format", "grounded", "--out", str(tmp_path / "clean.jsonl"))
    assert proc.returncode == 1
    assert f"{src}:2:" in proc.stdout and "unknown passage id '7'" in proc.stdout
    assert f"{src}:3:" in proc.stdout and "is in no passage" in proc.stdout
    assert f"{src}:4:" in proc.stdout and "passages" in proc.stdout
    kept = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert len(kept) == 2  # the good row and the abstention
    assert len((tmp_path / "clean.rejects.jsonl").read_text().splitlines()) == 3  # rejected rows kept with reasons
    # a recipe's own abstention text: the abstaining row is good with it, and rejected without it
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**good, "answer": "No answer."}) + "\n")
    assert run_cli("validate", str(other), "--format", "grounded", "--abstention", "No answer.").returncode == 0
    proc = run_cli("validate", str(other), "--format", "grounded")
    assert proc.returncode == 1 and "is not the abstention" in proc.stdout


def test_same_answer_ignores_citations_and_case_but_not_abstention():
    from realign.data.grounded import same_answer

    assert same_answer("Fish [2]", "fish [1]") and same_answer("I don't know.", ABSTAIN)
    assert not same_answer("I don't know", "fish [1]") and not same_answer("fish [1]", ABSTAIN)
    assert not same_answer("", "fish [1]") and not same_answer("", ABSTAIN) and not same_answer("red", "fish")


def test_an_empty_output_neither_answers_nor_abstains():
    m = grounded_metrics([ANS, UNANS], ["", ""])
    assert m["factuality"] == 0.0 and m["hallucination_rate"] == 0.0
    assert m["abstention_recall"] == 0.0 and m["accuracy"] == 0.0
    assert m["abstention_precision"] != m["abstention_precision"]  # no abstention at all: NaN


def test_citation_problems_of_collected_rows():
    from realign.data.grounded import citation_problem

    assert citation_problem(ANS) is None and citation_problem(UNANS) is None
    assert "cites no passage" in citation_problem(GroundedItem("q", P, "fish"))
    assert "does not state the answer 'fish'" in citation_problem(GroundedItem("q", P, "fish", ("2",)))
    assert "unknown passage id '5'" in citation_problem(GroundedItem("q", P, "fish", ("5",)))


def test_sample_verdicts_and_pairs_by_hand():
    from realign.eval.grounding import preference_pairs, sample_verdict

    assert [sample_verdict(ANS, o) for o in ("fish [1]", "fish", "fish [2]", "red [2]", "I don't know", "")] == [
        "good", "uncited", "uncited", "wrong", "abstained", "empty"]  # fmt: skip
    assert [sample_verdict(UNANS, o) for o in ("I don't know", "fish [1]", "")] == ["good", "invented", "empty"]
    samples = [
        ["fish", "fish [1]"],  # good and uncited: pair (fish [1] over fish)
        ["fish [1]", "fish [1]"],  # all good: no pair
        ["cat [1]", ""],  # no good sample: the reference is chosen; the empty sample is never a rejected one
        ["", ""],  # unanswerable, only empty samples: nothing to reject
    ]
    pairs, counts = preference_pairs([ANS, ANS, ANS, UNANS], samples)
    assert [(p["chosen"], p["rejected"], p["rejected_kind"]) for p in pairs] == [
        ("fish [1]", "fish", "uncited"), ("fish [1]", "cat [1]", "wrong")]  # fmt: skip
    assert counts == {"items": 4, "pairs": 2, "chosen_from_reference": 1, "uncited": 1, "good": 3, "wrong": 1,
                      "empty": 3}  # fmt: skip
    assert len(preference_pairs([ANS], [["cat [1]"]], reference_when_none_right=False)[0]) == 0
    assert preference_pairs([UNANS], [["fish [1]", "I don't know"]])[0][0]["chosen"] == "I don't know"


def test_calibration_comparison_by_hand():
    from realign.eval.grounding import compare_calibration

    conf, correct = [0.9, 0.9, 0.2, 0.2], [True, False, False, False]  # ECE 0.3 (test_ece_binning_spelled_out)
    same = compare_calibration("after", conf, correct, "before", conf, correct)
    assert same.first_value == pytest.approx(0.3) and same.difference == 0 and same.ci_low == same.ci_high == 0
    perfect = compare_calibration("after", [1.0, 1.0, 0.0, 0.0], [True, True, False, False], "before", conf, correct)
    assert perfect.first_value == 0.0 and perfect.difference == pytest.approx(-0.3)
    assert perfect.ci_low <= -0.3 + 1e-9 <= perfect.ci_high and perfect.items == 4


def test_confidence_is_the_geometric_mean_token_probability_of_the_output(tiny_model_dir):
    import math

    import mlx.core as mx
    import numpy as np

    from realign.eval.grounding import output_confidences
    from realign.model.load import load_model
    from realign.model.logprobs import encode

    lm = load_model(tiny_model_dir)
    prompt, output = ANS.prompt(), "fish [1]"
    (conf,) = output_confidences(lm.model, lm.tokenizer, [prompt], [output])
    # by hand: the log-probability of each output token (and the end of turn) given everything before it
    enc = encode(lm.tokenizer, prompt, output)
    tokens = mx.array([enc.ids])
    logp = np.array(mx.log(mx.softmax(lm.model(tokens[:, :-1]).astype(mx.float32), axis=-1))[0])
    picked = [logp[t - 1, enc.ids[t]] for t in range(enc.n_prompt, len(enc.ids))]
    assert conf == pytest.approx(math.exp(sum(picked) / len(picked)), rel=1e-4)
    assert output_confidences(lm.model, lm.tokenizer, [], []) == []


def test_only_the_abstention_itself_abstains_and_the_chosen_text_is_never_the_rejected_one():
    from realign.data.grounded import same_answer
    from realign.eval.grounding import preference_pairs, sample_verdict

    # an answer after the abstention is an answer (here an invented one), not an abstention
    assert parse_output("I don't know. It is a cat [1]").abstained is False
    assert sample_verdict(UNANS, "I don't know. It is a cat [1]") == "invented"
    assert parse_output("i don't know.").abstained and parse_output("I don't know [1]").abstained
    # an abstention that starts like an answer ("No" vs "norway") does not swallow it
    p = (Passage("1", "kiki's city is norway."),)
    item = GroundedItem("What is kiki's city?", p, "norway", ("1",), abstention="No")
    assert parse_output("norway [1]", "No").abstained is False and parse_output("No.", "No").abstained
    assert sample_verdict(item, "norway [1]") == "good"
    pairs, _ = preference_pairs([item], [["norway [1]", "No"]])
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [("norway [1]", "No")]
    # the judge of stages 1, 6 and 7 needs no abstention text: it compares with the target itself
    assert same_answer("No answer.", "No answer") and not same_answer("I don't know", "No answer")
    assert same_answer("[no answer]", "[no answer]") and not same_answer("", "[no answer]")
    # a right answer naming the wrong passage, or a wrong answer copied from the passage, is not accurately cited
    kiki = GroundedItem("What is kiki's pet?", (Passage("1", "kiki's pet is cat."),), "cat", ("1",))
    m = grounded_metrics([kiki, kiki], ["kiki [1]", "cat [1]"])
    assert m["citation_accuracy"] == 1.0 and m["factuality"] == 0.5 and m["hallucination_rate"] == 0.0
