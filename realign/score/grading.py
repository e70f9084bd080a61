"""Grade every response of an RLVR or GRPO file with a verifier, and compare with the labels it already had.

RLVR rows carry their reference (`solution`, optional `tests`); GRPO rows may carry one as extra keys
(`solution` or `answer`, optional `tests`): a GRPO row without one cannot be graded and keeps its score, with a
verifier status "error" saying so. Rows are written back in input order with each response's `correct` (RLVR) or
`score` (GRPO, 1.0 / 0.0) set to the verdict and a `verifier` object; every other key is kept as it was.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from realign.data.formats import DataFormatError, check_input_file, first_record, guess_format, iter_checked
from realign.io import atomic_path
from realign.score.sandbox import WEAK, WEAK_MESSAGE, SandboxLimits, isolation
from realign.score.verify import check_many, resolve_kind


@dataclass
class GradeReport:
    """Counts over all responses. Against the input's labels (RLVR `correct`; GRPO `score` >= 0.5 is "right"):
    false positive = labelled wrong, verifier passed; false negative = labelled right, verifier did not pass."""

    rows: int = 0
    responses: int = 0
    statuses: Counter = field(default_factory=Counter)
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0
    ungradable_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, why)
    code_responses: int = 0  # graded by running code in the sandbox
    seconds: float = 0.0

    @property
    def false_positive_rate(self) -> float:
        """FP / labelled wrong (NaN when the input labelled nothing wrong)."""
        wrong = self.false_positive + self.true_negative
        return self.false_positive / wrong if wrong else float("nan")

    @property
    def false_negative_rate(self) -> float:
        right = self.false_negative + self.true_positive
        return self.false_negative / right if right else float("nan")


def _reference(obj: dict, fmt: str) -> tuple[str | None, list[str] | None, str]:
    """(solution, tests, why not) of a row."""
    tests = obj.get("tests")
    tests = tests if isinstance(tests, list) and all(isinstance(t, str) for t in tests) and tests else None
    solution = obj.get("solution") if fmt == "rlvr" else obj.get("solution", obj.get("answer"))
    if isinstance(solution, (int, float)) and not isinstance(solution, bool):
        solution = str(solution)  # a GRPO row's numeric answer
    if obj.get("tests") is not None and tests is None:
        return None, None, "'tests' is not a non-empty list of strings (Python statements)"
    if not isinstance(solution, str):
        return None, tests, "no reference: a GRPO row needs 'solution' (or 'answer') and, for code, 'tests'"
    return solution, tests, ""


def grade_file(
    path: str | Path,
    out: str | Path,
    kind: str = "auto",
    limits: SandboxLimits | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> GradeReport:
    """Grade `path` (RLVR or GRPO JSONL) into `out` (JSONL, written atomically). Raises DataFormatError at the
    first invalid row (nothing is written: validate the file first) and ValueError for a task the chosen verifier
    cannot apply to (e.g. --verifier numeric on a solution without a number)."""
    t0 = time.perf_counter()
    check_input_file(path)
    first = first_record(path)
    fmt = guess_format(first) if first else None
    if fmt not in ("rlvr", "grpo"):
        raise DataFormatError(
            path, 1, ["not an RLVR or GRPO row (expected problem/solution/responses or prompt/responses)"]
        )
    rows: list[tuple[int, dict]] = []
    for res in iter_checked(path, fmt):
        if res is None:
            continue
        if res.problems:
            raise DataFormatError(
                path, res.line, res.problems + [f"check the file with: realign validate {path} --format {fmt}"]
            )
        rows.append((res.line, res.obj))  # type: ignore[arg-type]

    report = GradeReport(rows=len(rows))
    items, where = [], []
    for i, (line, obj) in enumerate(rows):
        solution, tests, why = _reference(obj, fmt)
        if solution is None:
            report.ungradable_rows.append((line, why))
            continue
        for j, resp in enumerate(obj["responses"]):
            items.append((resp["text"], solution, tests))
            where.append((i, j, line))

    report.code_responses = sum(1 for _, sol, tests in items if resolve_kind(kind, sol, tests) == "python")
    if report.code_responses and isolation() in WEAK and not (limits or SandboxLimits()).allow_weak_isolation:
        raise ValueError(WEAK_MESSAGE)  # before anything is written: no label is overwritten by a run that never ran
    verdicts = []
    step = max(1, min(32, len(items) // 20 or 1))
    for start in range(0, len(items), step):
        verdicts += check_many(kind, items[start : start + step], limits)
        if on_progress:
            on_progress(len(verdicts), len(items))
    for (i, j, line), v in zip(where, verdicts, strict=True):
        if isinstance(v, ValueError):
            raise ValueError(f"{path}:{line}: {v}")
        resp = rows[i][1]["responses"][j]
        labelled_right = bool(resp["correct"]) if fmt == "rlvr" else float(resp["score"]) >= 0.5
        report.responses += 1
        report.statuses[v.status] += 1
        if v.correct:
            report.true_positive += labelled_right
            report.false_positive += not labelled_right
        else:
            report.false_negative += labelled_right
            report.true_negative += not labelled_right
        if fmt == "rlvr":
            resp["correct"] = v.correct
        else:
            resp["score"] = 1.0 if v.correct else 0.0
        resp["verifier"] = v.record()
    by_line = dict(rows)
    for line, why in report.ungradable_rows:
        obj = by_line[line]
        for resp in obj["responses"]:
            resp["verifier"] = {"kind": kind, "status": "error", "seconds": 0.0, "detail": why}
        report.statuses["error"] += len(obj["responses"])
        report.responses += len(obj["responses"])
    with atomic_path(out, "w") as fh:
        for _, obj in rows:
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    report.seconds = time.perf_counter() - t0
    return report
