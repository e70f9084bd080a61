"""The verifier probe: known-wrong answers really are wrong, rewrites really are equivalent, and the rates,
verifiability and coverage are the hand-computed ones."""

from __future__ import annotations

import random

from realign.data.code_tasks import CODE_TASKS
from realign.eval.verifiability import (
    ProbeRow,
    VerifiableTask,
    code_mutants,
    coverage,
    embedded_categories,
    error_rates,
    probe_verifier,
    task_verifiable,
    tasks_from_data,
    wrong_text_answers,
)
from realign.score.sandbox import run_python_tests


def test_wrong_text_answers_differ_from_the_solution_and_keep_a_digit_strings_width():
    for sol in ("1284", "007", "9", "abc", "3/4"):
        wrong = wrong_text_answers(sol, random.Random(0))
        assert wrong and all(a.strip() != sol for _, a in wrong)
    kinds = dict(wrong_text_answers("1284", random.Random(0)))
    assert len(kinds["off by one"]) == 4 and kinds["hedged"].endswith(" or 1284") and kinds["empty"] == ""
    assert kinds["hedged after 'the answer is'"].startswith("The answer is ")
    assert dict(wrong_text_answers("0421", random.Random(0)))["leading zero dropped"] == "421"
    assert dict(wrong_text_answers("Paris", random.Random(0)))["case changed"] == "pARIS"


def test_code_mutants_parse_differ_and_fail_the_tests():
    task = CODE_TASKS[0]
    mutants = code_mutants(task.solution)
    assert mutants
    for name, text in mutants:
        assert text.strip() != task.solution.strip()
        assert run_python_tests(text, list(task.tests)).status == "failed", name


def _row(task, probe, should, passed):
    return ProbeRow(task, "c", "exact", probe, "x", should, passed, "passed" if passed else "failed", 0.0)


def test_rates_and_verifiability_by_hand():
    rows = [
        _row(0, "reference", True, True),
        _row(0, "wrong: a", False, False),
        _row(0, "wrong: b", False, True),  # a false positive: task 0 is not verifiable
        _row(1, "reference", True, False),  # the reference fails: task 1 is not verifiable
        _row(1, "wrong: a", False, False),
        _row(1, "rewrite: a", True, True),
        _row(2, "reference", True, True),
        _row(2, "wrong: a", False, False),
    ]
    rows.append(ProbeRow(2, "c", "numeric", "wrong: b", "x", False, False, "error", 0.0))  # not judged: in no rate
    rates = error_rates(rows)
    assert rates["false_positive_rate"] == 1 / 4  # of the 4 judged known-wrong answers, 1 accepted
    assert rates["false_negative_rate"] == 0.0  # the one rewrite was accepted (references are counted apart)
    assert rates["reference_failures"] == 1 and rates["not_judged"] == 1
    assert task_verifiable(rows, 3) == [False, False, True]


def test_coverage_counts_tasks_with_both_a_right_and_a_wrong_sample_per_category():
    tasks = [VerifiableTask("A: 1", "1", "A"), VerifiableTask("A: 2", "2", "A"), VerifiableTask("B: 3", "3", "B")]
    cov = coverage(tasks, [[True, False], [True, True], [False, True]])
    assert cov == {"A": 0.5, "B": 1.0, "all": 2 / 3}


def test_the_exact_verifier_on_digit_tasks_rejects_every_known_wrong_answer():
    prompts = ["Reverse: 120", "Copy: 5"]
    tasks = tasks_from_data(prompts, {"Reverse: 120": "021", "Copy: 5": "5"}, embedded_categories(prompts))
    assert [t.category for t in tasks] == ["Reverse", "Copy"]
    assert tasks_from_data(["At 3:00 pm?"], {"At 3:00 pm?": "5"})[0].category == "all"  # files: no guessing
    rows = probe_verifier(tasks, "exact")
    assert error_rates(rows)["false_positive_rate"] == 0.0
    assert task_verifiable(rows, 2) == [True, True]


def test_code_tasks_probe_includes_hostile_responses_and_none_passes():
    tasks = [VerifiableTask(t.problem, t.solution, "code", t.tests) for t in CODE_TASKS[:2]]
    rows = probe_verifier(tasks, "auto")
    hostile = [r for r in rows if "hostile" in r.probe]
    assert len(hostile) == 10 and not any(r.passed for r in hostile)
    assert all(r.passed for r in rows if r.probe == "reference")


def test_the_auto_verifier_on_digit_strings_with_a_leading_zero_is_exact():
    tasks = tasks_from_data(["Reverse: 120"], {"Reverse: 120": "021"})
    rows = probe_verifier(tasks, "auto")
    assert {r.kind for r in rows} == {"exact"} and error_rates(rows)["false_positive_rate"] == 0.0
    math_rows = probe_verifier(tasks, "math")  # as numbers, "21" is "021": the probe catches it
    assert error_rates(math_rows)["false_positive_rate"] > 0 and task_verifiable(math_rows, 1) == [False]
