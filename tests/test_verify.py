"""Each verifier kind with right, wrong and tricky answers; auto's choice; the RL scorer shape."""

from __future__ import annotations

from fractions import Fraction

import pytest

from realign.score.verify import (
    TaskVerifier,
    check,
    final_answer,
    last_number,
    normalize_text,
    parse_number,
    resolve_kind,
)


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", Fraction(42)),
        ("-3/4", Fraction(-3, 4)),
        ("1,234.5", Fraction(24690, 20)),
        ("12%", Fraction(12, 100)),
        ("1e-3", Fraction(1, 1000)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("$5", Fraction(5)),
        ("−7", Fraction(-7)),  # a Unicode minus sign
        ("seven", None),
        ("1/0", None),
        ("1,23", None),  # not a thousands separator
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_last_and_final_answers():
    assert last_number("3 apples and 4 pears, so 7") == 7
    assert last_number("no digits") is None
    assert final_answer("so \\boxed{\\frac{1}{2}} is it") == "\\frac{1}{2}"
    assert final_answer("nested \\boxed{\\sqrt{x^{2}}}") == "\\sqrt{x^{2}}"
    assert final_answer("Answer: 12 apples.\nThen more text 99") == "12 apples"
    assert final_answer("work... #### 1,000") == "1,000"
    assert final_answer("first 3 then 5") is None  # a hedge states no answer
    assert final_answer("3 + 4 = 7\n7") == "7"
    assert final_answer("391 or 321") is None
    assert final_answer("nothing here") is None


@pytest.mark.parametrize(
    "response, solution, ok",
    [
        ("Paris", "Paris", True),
        ('  "Paris." ', "Paris", True),
        ("paris", "Paris", False),  # case counts: identifiers, formulas, string tasks
        ("Paris, France", "Paris", False),
        ("", "Paris", False),
        ("1284", "1284", True),
        ("12840", "1284", False),
    ],
)
def test_exact(response, solution, ok):
    assert check("exact", response, solution).correct is ok


@pytest.mark.parametrize(
    "response, solution, ok",
    [
        ("The total is 1,234", "1234", True),
        ("0.75", "3/4", True),
        ("3/4 of them", "0.75", True),
        ("0.7500000001", "0.75", True),  # within the relative tolerance
        ("0.76", "0.75", False),
        ("it is 3 or 4", "3", False),  # hedging states no answer
        ("it is 4 or 3", "3", False),
        ("no number", "3", False),
        ("50%", "0.5", True),
        ("1000001", "1000000", False),  # whole numbers are compared exactly, however large
        ("The answer is 3 or 4", "4", False),  # a marked hedge states no answer
        ("answer: 3, 4", "4", False),
        ("answer: 12 apples, not 13", "13", False),
        ("answer: 13 apples", "13", True),
    ],
)
def test_numeric(response, solution, ok):
    assert check("numeric", response, solution).correct is ok


def test_numeric_needs_a_number_in_the_solution():
    with pytest.raises(ValueError, match="holds no number"):
        check("numeric", "5", "five")


@pytest.mark.parametrize(
    "response, solution, ok",
    [
        ("so the answer is \\boxed{\\frac{3}{4}}", "0.75", True),
        ("\\boxed{\\dfrac{6}{8}}", "\\frac{3}{4}", True),  # equivalent forms
        ("The answer is 42.", "42", True),
        ("#### 18", "The ducks lay 16 eggs ... #### 18", True),  # GSM8K-style reference
        ("\\boxed{x^2+1}", "x^{2} + 1", True),
        ("\\boxed{\\left(1,2\\right)}", "(1,2)", True),
        ("I tried 41 and 42 but the answer is 41", "42", False),
        ("\\boxed{43}", "42", False),
        ("no idea", "42", False),
        ("41 or 42", "42", False),  # listing candidates earns nothing
        ("\\boxed{41 or 42}", "42", False),
        ("8372614", "8372615", False),
        ("\\boxed{\\leftarrow}", "\\rightarrow", False),
        ("\\boxed{X}", "x", False),
        ("\\boxed{x^3+1}", "x^{2}+1", False),
    ],
)
def test_math(response, solution, ok):
    assert check("math", response, solution).correct is ok


def test_regex_is_a_full_match_and_a_bad_pattern_is_the_datas_fault():
    assert check("regex", " 2024-01-05 ", r"\d{4}-\d{2}-\d{2}").correct
    assert not check("regex", "2024-01-05 and more", r"\d{4}-\d{2}-\d{2}").correct
    with pytest.raises(ValueError, match="not a regular expression"):
        check("regex", "x", "(")


def test_auto_picks_python_with_tests_math_for_numbers_exact_otherwise():
    assert resolve_kind("auto", "x", ["assert f() == 1"]) == "python"
    assert resolve_kind("auto", "3/4", None) == "math"
    assert resolve_kind("auto", "\\boxed{2}", None) == "math"
    assert resolve_kind("auto", "Paris", None) == "exact"
    assert resolve_kind("auto", "04321", None) == "exact"  # a digit string with a leading zero is a string
    assert not check("auto", "4321", "04321").correct
    with pytest.raises(ValueError, match="unknown verifier"):
        resolve_kind("fuzzy", "x", None)
    v = check("auto", "def f():\n    return 1\n", "", ["assert f() == 1"])
    assert (v.correct, v.kind, v.status) == (True, "python", "passed")
    with pytest.raises(ValueError, match="needs the task's tests"):
        check("python", "def f(): pass", "")


def test_normalize_text():
    assert normalize_text("  'Hello   World.' ") == "Hello World"


def test_task_verifier_scores_known_prompts_and_refuses_unknown_ones():
    v = TaskVerifier({"Reverse: 123": "321", "Count the digits: 55": "2"})
    assert v.score(["Reverse: 123", "Reverse: 123", "Count the digits: 55"], ["321", "123", "2"]) == [1.0, 0.0, 1.0]
    with pytest.raises(KeyError, match="no known solution"):
        v.score(["What?"], ["x"])


def test_a_huge_response_is_wrong_unread():
    v = check("regex", "a" * 200_000, "a+")
    assert not v.correct and "longer than" in v.detail
