"""The code verifier's sandbox: every hand-written response in realign.data.code_tasks graded as it must be at every
isolation level (the verdict is decided outside the sandbox), each side effect prevented under the operating
system's sandbox, within bounded time, nothing left running or on disk; and the operating-system layer on its own."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

from realign.data.code_tasks import CODE_RESPONSES, CODE_TASKS
from realign.score import sandbox
from realign.score.sandbox import SandboxLimits, extract_code, run_python_tests

LIMITS = SandboxLimits(wall_seconds=6, cpu_seconds=3, memory_mb=512)
# the strongest isolation here, unshare (network only) where it works, and rlimits + the audit hook alone
KINDS = sorted(
    {sandbox.isolation(), "rlimits"} | ({"unshare"} if sandbox._runs(["unshare", "-r", "-n", "true"]) else set())
)


def sandbox_processes(tmp_root) -> list[str]:
    """Command lines of processes still running a harness from a sandbox under `tmp_root` (this test's own)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"{tmp_root}/realign-sandbox-" in line and "ps -eo" not in line]


@pytest.fixture(autouse=True)
def own_tmp(tmp_path, monkeypatch):
    """Sandboxes under this test's own folder, so what is left behind is this test's."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def bait(tmp_path):
    """A path that must not be created, a listening port that must not be reached, a secret that must not be read."""
    outside = tmp_path / "pwned"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7731")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    yield outside, server, secret
    server.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CODE_RESPONSES)), ids=[f"{r.task}-{r.kind}" for r in CODE_RESPONSES])
def test_each_response_is_graded_as_it_must_be_with_its_side_effects_prevented(case, kind, bait, own_tmp, monkeypatch):
    monkeypatch.setattr(sandbox, "isolation", lambda: kind)
    outside, server, secret = bait
    expected = CODE_RESPONSES[case]
    text = expected.filled(str(outside), server.getsockname()[1], str(secret))

    t0 = time.perf_counter()
    limits = LIMITS.model_copy(update={"allow_weak_isolation": kind in sandbox.WEAK})
    v = run_python_tests(text, list(CODE_TASKS[expected.task].tests), limits)
    took = time.perf_counter() - t0

    # the verdict holds at every isolation level: it is decided here, from built-in values
    assert v.passed is expected.correct, f"{expected.kind}: {v.status} ({v.detail}); output {v.output[:200]!r}"
    assert v.isolation == kind
    assert took < LIMITS.wall_seconds + 3, f"{expected.kind} took {took:.1f} s"
    assert list(own_tmp.iterdir()) == [], "a sandbox directory was left behind"
    if expected.kind in ("infinite loop", "sleeps forever"):
        assert v.status == "timeout"
    if expected.kind == "allocates 8 GB":
        assert v.status == "memory"
    if expected.kind == "floods stdout":
        assert v.status == "error" and "printed more than" in v.detail
    if kind in sandbox.WEAK:
        return  # side effects are limited there, not prevented: the operating system's sandbox is what prevents them
    assert not outside.exists(), f"{expected.kind} wrote outside its directory"
    with pytest.raises(socket.timeout):
        server.accept()  # nobody connected
    assert "TOP-SECRET" not in v.output, f"{expected.kind} read {secret}"
    assert sandbox_processes(own_tmp) == [], "a sandboxed process outlived its verdict"


def test_the_embedded_reference_solutions_pass_their_own_tests():
    for task in CODE_TASKS:
        v = run_python_tests(task.solution, list(task.tests), LIMITS)
        assert v.status == "passed", (task.problem, v.detail)
        assert v.tests_passed == v.tests_total == len(task.tests)


def test_verdict_details_say_what_failed():
    v = run_python_tests("def add(a, b):\n    return a * b\n", ["assert add(2, 2) == 4", "assert add(2, 3) == 5"])
    assert v.status == "failed" and v.tests_passed == 1 and v.tests_total == 2
    assert "add(2, 3) == 5" in v.detail and "6 vs 5" in v.detail
    v = run_python_tests("def add(a, b) return", ["assert add(1, 1) == 2"])
    assert v.status == "error" and "SyntaxError" in v.detail
    v = run_python_tests("def f():\n    return 1\n", [])  # no tests: nothing proves it right
    assert v.status == "failed"
    v = run_python_tests("x = 1\n", ["assert x ==== 1"])
    assert v.status == "error" and "do not parse" in v.detail


def test_a_test_that_raises_is_a_failure_and_truthy_asserts_need_builtin_values():
    tests = ["assert f(3)", "assert not f(0)"]
    assert run_python_tests("def f(x):\n    return [1] * x\n", tests).status == "passed"
    lying = "class T:\n    def __bool__(self):\n        return True\ndef f(x):\n    return T()\n"
    v = run_python_tests(lying, tests)
    assert v.status == "failed" and "only built-in values" in v.detail
    v = run_python_tests("def f(x):\n    raise KeyError('boom')\n", tests)
    assert v.status == "failed" and "KeyError" in v.detail


def test_code_is_taken_from_fenced_blocks():
    assert extract_code("Sure:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n\ny = 2"
    assert extract_code("x = 3") == "x = 3"


@pytest.mark.skipif(sandbox.isolation() != "bwrap", reason="bubblewrap not available: apt-get install -y bubblewrap")
def test_the_operating_system_layer_alone_blocks_writes_reads_network_and_signals(tmp_path, bait):
    """No worker, no audit hook: plain Python under bwrap cannot write outside, read the secret, connect or see the
    parent's processes."""
    outside, server, secret = bait
    home = tmp_path / "home"
    home.mkdir()
    exe, readable = sandbox.interpreter()
    script = f"""
import os, socket
results = []
try:
    open({str(outside)!r}, "w").write("x"); results.append("wrote")
except OSError:
    pass
try:
    open({str(secret)!r}).read(); results.append("read")
except OSError:
    pass
try:
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=1); results.append("connected")
except OSError:
    pass
try:
    os.kill({os.getpid()}, 0); results.append("signalled")
except OSError:
    pass
open("inside.txt", "w").write("ok")
print("done", results)
"""
    cmd = sandbox.wrap("bwrap", str(home), readable, [exe, "-I", "-S", "-c", script])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=home)
    assert proc.stdout.strip() == "done []", proc.stdout + proc.stderr
    assert not outside.exists()
    assert (home / "inside.txt").read_text() == "ok"  # its own directory stays writable


def test_rlimits_bound_cpu_and_memory_on_their_own(tmp_path):
    exe, _ = sandbox.interpreter()
    limits = SandboxLimits(cpu_seconds=1, memory_mb=256)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [exe, "-I", "-S", "-c", "while True: pass"], preexec_fn=sandbox.rlimits(limits), capture_output=True
    )
    assert proc.returncode != 0 and time.perf_counter() - t0 < 10
    proc = subprocess.run(
        [exe, "-I", "-S", "-c", "b = bytearray(2 * 1024 ** 3)"],
        preexec_fn=sandbox.rlimits(limits),
        capture_output=True,
        text=True,
    )
    assert "MemoryError" in proc.stderr


def test_no_response_can_make_the_verifier_process_exit(bait):
    """The worst of them in a row, in this process: it is still here and answers."""
    outside, server, secret = bait
    port = server.getsockname()[1]
    worst = [r for r in CODE_RESPONSES if any(w in r.kind for w in ("kill", "fork", "shell", "forges"))]
    assert len(worst) >= 5
    for r in worst:
        verdict = run_python_tests(r.filled(str(outside), port, str(secret)), list(CODE_TASKS[r.task].tests), LIMITS)
        assert verdict.passed is r.correct, r.kind
    assert run_python_tests(CODE_TASKS[0].solution, list(CODE_TASKS[0].tests), LIMITS).passed


def test_without_an_operating_system_sandbox_code_is_not_run_unless_allowed(monkeypatch, own_tmp):
    monkeypatch.setattr(sandbox, "isolation", lambda: "rlimits")
    v = run_python_tests(CODE_TASKS[0].solution, list(CODE_TASKS[0].tests))
    assert v.status == "error" and "bubblewrap" in v.detail and "allow" in v.detail
    weak = SandboxLimits(allow_weak_isolation=True)
    assert run_python_tests(CODE_TASKS[0].solution, list(CODE_TASKS[0].tests), weak).passed


def test_nested_comparisons_and_library_calls_in_tests_are_computed_here():
    """A second review: an object whose operators lie inside `and`, `all()` or `abs()`, and a solution's own `math`,
    must not pass (values cross as built-in values; `math` is this process's)."""
    tests = [
        "assert add(2, 3) == 5 and add(1, 1) == 2",
        "assert not add(2, 2) != 4",
        "assert abs(add(2, 3) - 5) < 1e-9",
        "assert all(add(i, i) == 2 * i for i in range(3))",
        "import math\nassert math.isclose(add(1, 1), 2.0)",
    ]
    liar = (
        "class A:\n    def __eq__(s, o):\n        return True\n    def __ne__(s, o):\n        return False\n"
        "    def __sub__(s, o):\n        return 0.0\n    __hash__ = object.__hash__\n"
        "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n"
        "def add(a, b):\n    return A()\n"
    )
    v = run_python_tests(liar, tests, LIMITS)
    assert v.status == "failed" and v.tests_passed == 0
    assert run_python_tests("def add(a, b):\n    return a + b\n", tests, LIMITS).passed


def test_a_signal_handler_finds_nothing_to_forge():
    forger = (
        "import os, signal\n"
        "def h(sig, frame):\n"
        "    while frame is not None:\n"
        "        frame.f_locals\n"
        "        frame = frame.f_back\n"
        "    os.write(4, b'{\"ok\": 5}\\n')\n"
        "signal.signal(signal.SIGALRM, h)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001)\n"
        "def add(a, b):\n    return 0\n"
    )
    assert not run_python_tests(forger, list(CODE_TASKS[0].tests), LIMITS).passed


def test_tests_the_evaluator_does_not_run_are_refused_as_the_datas_fault():
    for bad in ("import os\nassert os.getcwd()", "assert add.__globals__", "def f(): pass", "assert __import__('os')"):
        v = run_python_tests(CODE_TASKS[0].solution, [bad], LIMITS)
        assert v.status == "error", bad


def test_a_deep_directory_tree_is_cleaned_up(own_tmp):
    deep = "import os\nfor i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\ndef add(a, b):\n    return a + b\n"
    v = run_python_tests(deep, list(CODE_TASKS[0].tests), LIMITS)
    assert v.passed and list(own_tmp.iterdir()) == []
