"""Verifiers for verifiable-reward RL: does a response solve the task? One interface, six kinds.

`check(kind, response, solution, tests=None)` -> `Verdict(correct, status, seconds, detail, kind)`:
- exact: equal after normalising whitespace, surrounding quotes and a final period (case counts).
- numeric: the one number the response's final answer states equals the solution's: exactly, or within a
  tolerance when either is written as a decimal; fractions (3/4), thousands separators (1,234), percentages and
  scientific notation are read as numbers.
- math: the final answer (`\\boxed{...}`, "answer: ...", "the answer is ...", GSM8K's "#### ...", else the last
  number) equals the solution's, as numbers (fractions, \\frac{a}{b}, decimals) or as normalised LaTeX text.
- regex: the whole response (trimmed) matches the solution, read as a regular expression (a format check).
- python: the response's code passes the task's tests (assert statements) in a sandbox (realign.score.sandbox).
- auto: python when the task has tests, exact for a digit string with a leading zero, math when the solution is a
  number or a math answer, exact otherwise.

A verifier must not be foolable: a response is judged by its final answer only, and a hedge that lists candidates
("3 or 4") states none, so listing guesses does not earn the reward (found by the stage-3 probe's "hedged" answers).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from realign.data.grounded import same_answer
from realign.score.sandbox import SandboxLimits, run_python_tests

Kind = Literal["exact", "numeric", "math", "regex", "python"]
KINDS: tuple[str, ...] = ("auto", "exact", "numeric", "math", "regex", "python")
MAX_RESPONSE_CHARS = 100_000  # beyond this a response is judged wrong unread (regex and parsing stay bounded)


@dataclass
class Verdict:
    """One response judged. status: passed / failed / timeout / memory / error (only code runs time out or run out
    of memory; error: the verifier could not judge, e.g. no final answer found or the code would not load)."""

    correct: bool
    status: str
    seconds: float
    kind: str
    detail: str = ""

    def record(self) -> dict:
        """The `verifier` object `realign verify` writes next to each response."""
        out = {"kind": self.kind, "status": self.status, "seconds": round(self.seconds, 4)}
        if self.detail:
            out["detail"] = self.detail
        return out


# --- normalising and reading answers --------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Whitespace collapsed, surrounding quotes/backticks and a final period removed; case kept (identifiers,
    formulas and string tasks are case-sensitive, and a false positive costs more than a false negative)."""
    t = " ".join(text.strip().split())
    for _ in range(2):
        t = t.strip().strip("\"'`").strip()
        t = t[:-1] if t.endswith(".") and not t.endswith("..") else t
    return t


_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?|[-+−]?\.\d+(?:[eE][-+]?\d+)?%?"
_FRACTION = re.compile(rf"^\s*({_NUM})\s*/\s*({_NUM})\s*$")
_NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?")


def parse_number(text: str) -> Fraction | None:
    """A number written as text: '1,234.5', '-3/4', '12%', '1e-3', '\\frac{3}{4}', '$5'; None when it is not one.
    Exact (a Fraction), so 1/3 and 2/6 are equal and 0.1 + 0.2 reads as 3/10."""
    t = text.strip().strip("$").replace("\\!", "").replace("−", "-").replace("\\%", "%").strip()
    t = re.sub(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$", r"\1/\2", t)
    t = re.sub(r"^-\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$", r"-\1/\2", t)
    m = _FRACTION.match(t)
    if m:
        num, den = parse_number(m.group(1)), parse_number(m.group(2))
        return None if num is None or den is None or den == 0 else num / den
    if not re.fullmatch(_NUM, t):
        return None
    percent = t.endswith("%")
    t = t.rstrip("%").replace(",", "").lstrip("+")
    try:
        value = Fraction(t)
    except (ValueError, ZeroDivisionError):
        try:
            f = float(t)
        except ValueError:
            return None
        if not math.isfinite(f):
            return None
        value = Fraction(f)
    return value / 100 if percent else value


def last_number(text: str) -> Fraction | None:
    """The last number written in `text` (fractions such as 3/4 read whole), or None."""
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), nested braces respected."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


_ANSWER_MARK = re.compile(r"(?:final answer|the answer is|answer\s*[:=]|####)\s*[:=]?\s*(.+)", re.IGNORECASE)


def final_answer(text: str) -> str | None:
    """The final answer a response states: \\boxed{}, then the last 'answer: ...' / 'the answer is ...' / '####',
    then the number its last line states (None when that line holds different numbers: ambiguous)."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    marks = _ANSWER_MARK.findall(text)
    if marks:
        answer = marks[-1].strip().splitlines()[0].strip()
        return answer.rstrip(".").strip().strip("$").strip() or None
    # Unmarked: the number on the last line, and only when that line states one value; "391 or 321" (a hedge
    # listing candidates) is no answer, or listing guesses would earn the reward.
    lines = [line for line in text.strip().splitlines() if _NUMBER.search(line)]
    found = _NUMBER.findall(lines[-1]) if lines else []
    values = {parse_number(f) for f in found}
    return found[-1] if found and len(values) == 1 else None


def normalize_math(text: str) -> str:
    """LaTeX answer text with presentation removed: $, \\left/\\right, spacing commands, \\dfrac -> \\frac,
    \\text{...} wrappers, spaces, a trailing period."""
    t = text.strip().strip("$")
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"\\(left|right)(?![A-Za-z])|\\(displaystyle|!|,|;|:| )", "", t)  # not \\leftarrow
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    t = re.sub(r"\s+", "", t).rstrip(".")
    t = re.sub(r"([\^_])\{(\w)\}", r"\1\2", t)  # x^{2} is x^2
    return t


def _rounded(text: str) -> bool:
    """Whether a number is written as a (possibly rounded) decimal: a decimal point or an exponent."""
    return bool(re.search(r"\d\.\d|\d[eE][-+]?\d", text))


def _numbers_equal(a: Fraction, b: Fraction, a_text: str, b_text: str, rel_tol: float, abs_tol: float) -> bool:
    """Exactly equal, or within the tolerance when either side is written as a decimal: 1000001 is not 1000000
    however large, while 0.3333333 may stand for 1/3."""
    if a == b:
        return True
    if not (_rounded(a_text) or _rounded(b_text)):
        return False
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)


def _single_number(text: str) -> Fraction | None:
    """The one number `text` states ('12 apples' -> 12), None when it states none or several ('3 or 4')."""
    whole = parse_number(text)
    if whole is not None:
        return whole
    values = {parse_number(f) for f in _NUMBER.findall(text)} - {None}
    return values.pop() if len(values) == 1 else None


# --- the verifiers ------------------------------------------------------------------------------------------


def verify_exact(response: str, solution: str) -> tuple[bool, str]:
    got, want = normalize_text(response), normalize_text(solution)
    return got == want, "" if got == want else f"{got[:60]!r} is not {want[:60]!r}"


def verify_numeric(response: str, solution: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> tuple[bool, str]:
    want = parse_number(solution)
    if want is None:
        want = last_number(solution)
    if want is None:
        raise ValueError(f"the solution {solution[:60]!r} holds no number: use the exact or regex verifier")
    answer = final_answer(response)  # the stated answer, hedges excluded, as for math
    got = None if answer is None else _single_number(answer)
    if got is None:
        return False, "no single final number in the response"
    ok = _numbers_equal(got, want, answer or "", solution, rel_tol, abs_tol)
    return ok, "" if ok else f"{float(got):g} is not {float(want):g}"


def verify_math(response: str, solution: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> tuple[bool, str]:
    want_text = final_answer(solution) if ("\\boxed" in solution or "####" in solution) else solution.strip()
    got_text = final_answer(response)
    if got_text is None:
        return False, "no final answer in the response"
    want_num, got_num = parse_number(want_text or ""), parse_number(got_text)
    if want_num is not None and got_num is not None:
        ok = _numbers_equal(got_num, want_num, got_text, want_text or "", rel_tol, abs_tol)
        return ok, "" if ok else f"{got_text[:40]} is not {want_text[:40]}"
    ok = normalize_math(got_text) == normalize_math(want_text or "")
    return ok, "" if ok else f"{got_text[:40]!r} is not {want_text[:40]!r}"


def verify_regex(response: str, pattern: str) -> tuple[bool, str]:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"the solution {pattern[:60]!r} is not a regular expression: {exc}") from exc
    ok = rx.fullmatch(response.strip()) is not None
    return ok, "" if ok else f"does not match {pattern[:60]!r}"


def resolve_kind(kind: str, solution: str, tests: Sequence[str] | None) -> Kind:
    """The verifier `auto` means for this task: python with tests, math for a number or math answer, else exact."""
    if kind != "auto":
        if kind not in KINDS:
            raise ValueError(f"unknown verifier {kind!r} (expected one of {', '.join(KINDS)})")
        return kind  # type: ignore[return-value]
    if tests:
        return "python"
    s = solution.strip()
    if re.fullmatch(r"0\d+", s):
        return "exact"  # a digit string with a leading zero is a string ("0321" is not "321"), not a number
    if parse_number(s) is not None or "\\boxed" in s or "\\frac" in s or "####" in s:
        return "math"
    return "exact"


def check(
    kind: str,
    response: str,
    solution: str,
    tests: Sequence[str] | None = None,
    limits: SandboxLimits | None = None,
) -> Verdict:
    """Judge one response. Raises ValueError only for a task the verifier cannot apply to (no number in a numeric
    solution, a bad regex, python without tests): that is the data's fault, not the response's."""
    resolved = resolve_kind(kind, solution, tests)
    t0 = time.perf_counter()
    if resolved == "python":
        if not tests:
            raise ValueError("the python verifier needs the task's tests (a 'tests' list of assert statements)")
        v = run_python_tests(response, list(tests), limits)
        detail = v.detail if v.status != "passed" else ""
        return Verdict(v.passed, v.status, v.seconds, "python", detail)
    if len(response) > MAX_RESPONSE_CHARS:
        return Verdict(False, "failed", time.perf_counter() - t0, resolved, f"longer than {MAX_RESPONSE_CHARS} chars")
    fn = {"exact": verify_exact, "numeric": verify_numeric, "math": verify_math, "regex": verify_regex}[resolved]
    ok, detail = fn(response, solution)
    return Verdict(ok, "passed" if ok else "failed", time.perf_counter() - t0, resolved, detail)


def check_many(
    kind: str,
    items: Sequence[tuple[str, str, Sequence[str] | None]],
    limits: SandboxLimits | None = None,
    workers: int | None = None,
) -> list[Verdict | ValueError]:
    """Judge (response, solution, tests) items, code ones in parallel (each in its own sandbox); results in order.
    A task the verifier cannot apply to gives its ValueError in place of a verdict."""

    def one(item):
        try:
            return check(kind, item[0], item[1], item[2], limits)
        except ValueError as exc:
            return exc

    n = workers or max(1, min(8, os.cpu_count() or 1))
    if n == 1 or len(items) < 2:
        return [one(i) for i in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, items))


class TaskVerifier:
    """A scorer for RL: prompt -> its task's solution (and tests); score 1.0 when the verifier accepts the
    completion, else 0.0. Same shape as the other scorers (`score(prompts, completions)`, `name`)."""

    def __init__(
        self,
        solutions: dict[str, str],
        kind: str = "auto",
        tests: dict[str, list[str]] | None = None,
        limits: SandboxLimits | None = None,
    ):
        self.solutions, self.kind, self.tests, self.limits = solutions, kind, tests or {}, limits
        self.name = f"verifier ({kind})"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        missing = [p for p in prompts if p not in self.solutions]
        if missing:
            raise KeyError(f"no known solution for prompt {missing[0][:80]!r}: the verifier only scores known tasks")
        items = [(c, self.solutions[p], self.tests.get(p)) for p, c in zip(prompts, completions, strict=True)]
        out = []
        for v in check_many(self.kind, items, self.limits):
            if isinstance(v, ValueError):
                raise v
            out.append(1.0 if v.correct else 0.0)
        return out


def judge(kind: str | None) -> Callable[[str, str], bool] | None:
    """`is_correct(prediction, answer)` by the `kind` verifier, for evaluation sets (None: exact match of trimmed
    strings, the default of the shared stages; 'grounded': the output says what the reference says, citations, case
    and a final period aside, so an abstention counts whatever its text)."""
    if kind is None:
        return None
    if kind == "grounded":
        return same_answer

    def is_correct(prediction: str, answer: str) -> bool:
        return check(kind, prediction, answer).correct

    return is_correct
