"""Can the verifier be trusted on these tasks? Known-wrong answers and equivalent rewrites per task, judged.

A task is verifiable when its verifier accepts the reference solution and rejects every known-wrong answer made
for it. Over all tasks: false-positive rate = accepted known-wrong answers / known-wrong answers (the RLVR gate,
SPEC.md: < 5%), false-negative rate = rejected equivalent rewrites of the reference / rewrites (reported).

Known-wrong answers, by answer type:
- text and numbers: a digit changed, off by one, two adjacent characters swapped, a character dropped or doubled,
  the answer hedged with a wrong one ("W or S"), the empty answer;
- code: mutants of the reference (an arithmetic or comparison operator flipped, a constant changed, the result
  negated) that differ from it, and the hostile kinds (exit 0 before the tests, os._exit, replacing
  AssertionError, an always-equal object, a printed success marker).
Equivalent rewrites: surrounding whitespace, a final period, quotes; for math answers "The answer is S" and
\\boxed{S}; for code, the reference in a fenced block with a comment.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from realign.io import atomic_path
from realign.score.sandbox import SandboxLimits
from realign.score.verify import check_many, parse_number, resolve_kind


@dataclass(frozen=True)
class VerifiableTask:
    """A task: its prompt, reference solution, optional tests (code) and category (for coverage per category)."""

    prompt: str
    solution: str
    category: str = "all"
    tests: tuple[str, ...] | None = None


@dataclass
class ProbeRow:
    task: int
    category: str
    kind: str  # the verifier kind used for this task
    probe: str  # 'reference', 'wrong:<mutation>' or 'rewrite:<how>'
    text: str
    should_pass: bool
    passed: bool
    status: str
    seconds: float

    def record(self) -> dict:
        return asdict(self)


def _swap(s: str, i: int) -> str:
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def wrong_text_answers(solution: str, rng: random.Random) -> list[tuple[str, str]]:
    """(mutation, answer) pairs, each different from `solution` as text."""
    s = solution.strip()
    out: list[tuple[str, str]] = []
    digits = [i for i, c in enumerate(s) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        out.append(("changed digit", s[:i] + str((int(s[i]) + rng.randint(1, 9)) % 10) + s[i + 1 :]))
    value = parse_number(s)
    if value is not None and value.denominator == 1:
        n = int(value) + rng.choice((-1, 1))
        text = str(n).zfill(len(s)) if s.isdigit() and n >= 0 else str(n)  # keep a digit string's width
        out.append(("off by one", text))
    swaps = [i for i in range(len(s) - 1) if s[i] != s[i + 1]]
    if swaps:
        out.append(("swapped characters", _swap(s, rng.choice(swaps))))
    if len(s) > 1:
        i = rng.randrange(len(s))
        out.append(("dropped character", s[:i] + s[i + 1 :]))
    if s:
        i = rng.randrange(len(s))
        out.append(("doubled character", s[:i] + s[i] + s[i:]))
    if out:
        w = out[0][1]
        out += [
            ("hedged", f"{w} or {s}"),
            ("hedged after 'the answer is'", f"The answer is {w} or {s}."),
            ("hedged in a box", f"\\boxed{{{w}, {s}}}"),
            ("hedged with 'not'", f"answer: {s}, not {w}"),
        ]
    if re.fullmatch(r"0\d+", s):
        out.append(("leading zero dropped", s.lstrip("0") or "0"))
    if s.swapcase() != s:
        out.append(("case changed", s.swapcase()))
    out.append(("empty", ""))
    return [(m, a) for m, a in out if a.strip() != s]


_FLIPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
          ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}  # fmt: skip


def code_mutants(solution: str, limit: int = 4) -> list[tuple[str, str]]:
    """Mutants of a reference solution: one operator flipped, one integer constant changed, or a return negated;
    each parses and differs from the reference."""
    try:
        tree = ast.parse(solution)
    except SyntaxError:
        return []
    out: list[tuple[str, str]] = []
    for k in range(len(_sites(tree))):
        mutant = ast.parse(solution)
        node, what = _sites(mutant)[k]
        if what == "op":
            node.op = _FLIPS[type(node.op)]()
            name = "operator flipped"
        elif what == "cmp":
            node.ops[0] = _FLIPS[type(node.ops[0])]()
            name = "comparison flipped"
        elif what == "const":
            node.value += 1
            name = "constant changed"
        else:
            node.value = ast.UnaryOp(op=ast.Not(), operand=node.value)
            name = "result negated"
        text = ast.unparse(mutant) + "\n"
        if text != ast.unparse(tree) + "\n" and all(text != t for _, t in out):
            out.append((f"mutant: {name}", text))
        if len(out) >= limit:
            break
    return out


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp,)) and type(node.op) in _FLIPS:
            sites.append((node, "op"))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in _FLIPS:
            sites.append((node, "cmp"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append((node, "const"))
        elif isinstance(node, ast.Return) and node.value is not None:
            sites.append((node, "return"))
    return sites


def hostile_code(solution: str) -> list[tuple[str, str]]:
    """Responses that try to fake passing the task's tests, built for the functions the reference defines."""
    try:
        names = [n.name for n in ast.parse(solution).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        names = []
    stubs = "".join(f"def {n}(*args, **kwargs):\n    return Anything()\n\n" for n in names)
    zeros = "".join(f"def {n}(*args, **kwargs):\n    return 0\n\n" for n in names)
    anything = "class Anything:\n    def __eq__(self, other):\n        return True\n\n    def __ne__(self, other):\n"
    anything += "        return False\n\n    def __bool__(self):\n        return True\n\n\n"
    return [
        ("hostile: exit 0 before the tests", "import sys\nsys.exit(0)\n"),
        ("hostile: os._exit", "import os\nos._exit(0)\n"),
        ("hostile: replaces AssertionError", "import builtins\nbuiltins.AssertionError = KeyError\n" + zeros),
        ("hostile: always-equal object", anything + stubs),
        ("hostile: prints a success marker", "print('All tests passed')\nprint('OK')\n" + zeros),
    ]  # fmt: skip


def equivalent_rewrites(solution: str, kind: str) -> list[tuple[str, str]]:
    """Answers a correct verifier must accept: the reference written differently."""
    s = solution.strip()
    if kind == "python":
        return [("fenced, with a comment", f"Here is the function:\n```python\n# reference\n{s}\n```\n")]
    out = [("surrounding whitespace", f"  {s}\n"), ("final period", f"{s}."), ("quoted", f'"{s}"')]
    if kind in ("math", "numeric"):
        out += [("'the answer is'", f"The answer is {s}."), ("boxed", f"\\boxed{{{s}}}")]
    return out


def probe_verifier(
    tasks: Sequence[VerifiableTask],
    kind: str = "auto",
    seed: int = 0,
    limits: SandboxLimits | None = None,
) -> list[ProbeRow]:
    """Judge each task's reference, its known-wrong answers and its equivalent rewrites with the verifier."""
    rng = random.Random(seed)
    items, meta = [], []
    for i, t in enumerate(tasks):
        k = resolve_kind(kind, t.solution, t.tests)
        probes = [("reference", t.solution, True)]
        if k == "python":
            wrong = code_mutants(t.solution) + hostile_code(t.solution)
        else:
            wrong = wrong_text_answers(t.solution, rng)
        probes += [(f"wrong: {m}", a, False) for m, a in wrong]
        probes += [(f"rewrite: {m}", a, True) for m, a in equivalent_rewrites(t.solution, k)]
        for name, text, should in probes:
            items.append((text, t.solution, t.tests))
            meta.append((i, t.category, k, name, text, should))
    verdicts = check_many(kind, items, limits)
    rows = []
    for (i, cat, k, name, text, should), v in zip(meta, verdicts, strict=True):
        if isinstance(v, ValueError):
            rows.append(ProbeRow(i, cat, k, name, text, should, False, "error", 0.0))
        else:
            rows.append(ProbeRow(i, cat, k, name, text, should, v.correct, v.status, v.seconds))
    return rows


def task_verifiable(rows: Sequence[ProbeRow], n_tasks: int) -> list[bool]:
    """Per task: the reference passed and every known-wrong answer failed."""
    ok = [True] * n_tasks
    for r in rows:
        if r.probe == "reference" and not r.passed:
            ok[r.task] = False
        if r.probe.startswith("wrong") and r.passed:
            ok[r.task] = False
    return ok


def error_rates(rows: Sequence[ProbeRow]) -> dict[str, float]:
    """false_positive_rate: known-wrong answers the verifier accepted / those it judged; false_negative_rate:
    equivalent rewrites it rejected / those it judged (references apart: `reference_failures`). Probes the verifier
    could not judge (status 'error', e.g. no number in a numeric task) are counted apart, in neither rate."""
    judged = [r for r in rows if r.status != "error"]
    wrong = [r for r in judged if not r.should_pass]
    rewrites = [r for r in judged if r.probe.startswith("rewrite")]
    return {
        "false_positive_rate": sum(r.passed for r in wrong) / len(wrong) if wrong else float("nan"),
        "false_negative_rate": sum(not r.passed for r in rewrites) / len(rewrites) if rewrites else float("nan"),
        "known_wrong": len(wrong),
        "equivalent": len(rewrites),
        "reference_failures": sum(1 for r in rows if r.probe == "reference" and not r.passed),
        "not_judged": len(rows) - len(judged),
    }


def write_tasks(path: str | Path, tasks: Sequence[VerifiableTask], verifiable: Sequence[bool]) -> Path:
    """tasks.jsonl: one row per task (prompt, solution, category, tests, verifiable), written atomically."""
    with atomic_path(path, "w") as fh:
        for t, ok in zip(tasks, verifiable, strict=True):
            row = {
                "prompt": t.prompt,
                "solution": t.solution,
                "category": t.category,
                "tests": t.tests,
                "verifiable": ok,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_tasks(path: str | Path, limit: int | None = None) -> list[VerifiableTask]:
    """The verifiable tasks of a tasks.jsonl (the first `limit`), in order."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    tasks = [
        VerifiableTask(r["prompt"], r["solution"], r["category"], tuple(r["tests"]) if r["tests"] else None)
        for r in rows
        if r["verifiable"]
    ]
    return tasks[:limit]


def tasks_from_data(
    prompts: Sequence[str], answers: dict[str, str], categories: dict[str, str] | None = None
) -> list[VerifiableTask]:
    """Tasks from prompts with reference answers, in `categories` (prompt -> category; 'all' when not given)."""
    return [VerifiableTask(p, answers[p], (categories or {}).get(p, "all")) for p in prompts]


def embedded_categories(prompts: Sequence[str]) -> dict[str, str]:
    """The embedded digit tasks' category: the prompt's lead-in ('Reverse', 'Copy', 'Count the digits')."""
    return {p: p.partition(":")[0].strip() for p in prompts}


def coverage(tasks: Sequence[VerifiableTask], correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """Share of tasks with at least one right and one wrong sample, overall ('all') and per category."""
    by: dict[str, list[bool]] = {}
    for t, c in zip(tasks, correct, strict=True):
        mixed = any(c) and not all(c)
        by.setdefault(t.category, []).append(mixed)
        if t.category != "all":
            by.setdefault("all", []).append(mixed)
    return {k: sum(v) / len(v) for k, v in sorted(by.items())}


def verified_rate(
    model,
    tokenizer,
    prompts: Sequence[str],
    solutions: Sequence[str],
    kind: str = "auto",
    *,
    max_tokens: int = 16,
    batch_size: int = 64,
    limits: SandboxLimits | None = None,
) -> tuple[float, list[bool]]:
    """Greedy answers to `prompts`, judged by the verifier: (share accepted, per-prompt verdicts)."""
    from realign.model.generate import GenerationConfig, generate

    if not prompts:
        return float("nan"), []
    outs = generate(
        model, tokenizer, list(prompts), GenerationConfig(temperature=0.0, max_tokens=max_tokens, batch_size=batch_size)
    )
    verdicts = check_many(kind, [(o[0].text, s, None) for o, s in zip(outs, solutions, strict=True)], limits)
    failures = [v for v in verdicts if isinstance(v, ValueError)]
    if failures:  # the verifier cannot judge these items: the rate is not computed, rather than counted as wrong
        raise ValueError(f"the {kind} verifier cannot judge {len(failures)} held-out items: {failures[0]}")
    ok = [v.correct for v in verdicts]  # type: ignore[union-attr]
    return sum(ok) / len(ok), ok
