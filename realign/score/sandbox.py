"""Run an untrusted response's Python code against its tests, in a sandbox, and say whether it passed.

The verdict is decided here, in this (trusted) process, never inside the sandbox: the response's code runs in a
worker process (`_worker.py`) that holds no secret and only answers calls ("call add(2, 3)"), sending back values
as tagged JSON that decode into built-in values only. The tests (MBPP-style asserts, from the data, never from the
response) are checked against a whitelist of syntax and evaluated here, with this process's own builtins and
modules, the solution's functions standing in as proxies; every value that comes back is of a built-in type, so
every comparison, `and`, `all()` or `abs()` in a test is computed by built-in code. Exiting 0 early, `os._exit`,
replacing AssertionError, an always-equal object, printing a success marker, patching builtins or modules, or
reading the worker's own memory therefore cannot make a wrong answer pass: there is nothing there to forge.

What the sandbox is for, then, is side effects and resources. Layers, outermost first:
1. The operating system. Linux: bubblewrap (`bwrap`) when installed: new user, PID, network, IPC and UTS
   namespaces, a read-only view of the Python installation and system libraries only, the response's own
   temporary directory the only writable (and the only other readable) place; without bwrap, `unshare -n` (no
   network) where it works. macOS: `sandbox-exec` with a profile denying network, process creation and writes
   outside the directory. Always: a new process group, rlimits (CPU seconds, address space, file size, open
   files, no core dumps), a wall-clock deadline, and every process of the group killed at the end.
2. Inside the worker, an audit hook denying processes, signals, sockets, ctypes, links and writes outside the
   directory: defence in depth only. Code in the worker's own interpreter can get around an audit hook (native
   code, fresh copies of built-in modules), so without bubblewrap or sandbox-exec side effects are limited, not
   prevented: `isolation()` says which level a machine has, and `realign verify` warns when it is weak.
3. This process: reads a bounded amount of each reply and of the output, never waits past the deadline, and
   cleans up the directory whatever the code left in it.
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib
import json
import operator
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The worker's encoder, for the arguments this process sends (the worker runs it as a script, so it lives there);
# replies are decoded here by decode_value, which trusts nothing.
from realign.score._worker import encode as encode_value

Status = Literal["passed", "failed", "timeout", "memory", "error"]
WORKER = Path(__file__).with_name("_worker.py")


class SandboxLimits(BaseModel):
    """Limits of one response's run (per response, not per test)."""

    model_config = ConfigDict(extra="forbid")

    wall_seconds: float = Field(10.0, gt=0, le=3600, description="Wall-clock deadline; past it the run is killed.")
    cpu_seconds: int = Field(5, ge=1, le=3600, description="CPU-time limit (RLIMIT_CPU).")
    memory_mb: int = Field(
        1024, ge=64, le=1_000_000, description="Address-space limit in MiB (RLIMIT_AS; Linux enforces it)."
    )
    output_bytes: int = Field(
        1_000_000, ge=1024, le=1_000_000_000, description="Output (stdout + stderr) kept; beyond it the run is killed."
    )
    file_bytes: int = Field(
        10_000_000, ge=1024, le=10_000_000_000, description="Largest file the code may write (RLIMIT_FSIZE)."
    )
    allow_weak_isolation: bool = Field(
        False,
        description="Run code even where no operating-system sandbox exists (no bubblewrap on Linux): verdicts stay "
        "trustworthy, but the code's side effects are only limited, not prevented.",
    )


@dataclass
class CodeVerdict:
    """What running one response's code against its tests gave."""

    status: Status
    seconds: float
    detail: str = ""
    tests_passed: int = 0
    tests_total: int = 0
    isolation: str = ""
    output: str = ""  # the first KiB of what the code printed, for the report
    tests: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The code of a response: its fenced ```python blocks joined (a model's answer often wraps code in prose),
    else the whole text."""
    blocks = _FENCE.findall(response)
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else response


def interpreter() -> tuple[str, list[str]]:
    """The base interpreter (run isolated, -I -S: no virtual environment, no site-packages) and the directories the
    sandbox must be able to read for it to start: its installation and the system libraries."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix), os.path.dirname(exe)}
    return exe, sorted(roots)


# Isolation levels that limit but do not prevent side effects (no filesystem or process isolation).
WEAK = ("unshare", "rlimits")
WEAK_MESSAGE = (
    "no operating-system sandbox on this machine (bubblewrap is not installed), so the code was not run: install it "
    "(sudo apt-get install -y bubblewrap), or allow weak isolation (realign verify --allow-weak-sandbox, "
    "SandboxLimits(allow_weak_isolation=True)) where the code is trusted not to harm the machine"
)


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@cache
def isolation() -> str:
    """The strongest operating-system isolation that works on this machine: 'bwrap', 'sandbox-exec', 'unshare'
    (network only) or 'rlimits' (the harness's audit hook and resource limits alone)."""
    if sys.platform == "darwin" and shutil.which("sandbox-exec") and _runs(["sandbox-exec", "-p", _MAC_TEST, "true"]):
        return "sandbox-exec"
    if sys.platform.startswith("linux"):
        bwrap = shutil.which("bwrap")
        if bwrap and _runs([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]):
            return "bwrap"
        unshare = shutil.which("unshare")
        if unshare and _runs([unshare, "-r", "-n", "true"]):
            return "unshare"
    return "rlimits"


_MAC_TEST = "(version 1)(allow default)"


def _mac_profile(home: str, readable: list[str]) -> str:
    quoted = " ".join(f'(subpath "{p}")' for p in [home, *readable, "/usr/lib", "/System", "/dev", "/private/var/db"])
    return (
        "(version 1)(allow default)"
        "(deny network*)(deny process-fork)"
        f'(deny file-write* (require-not (subpath "{home}")))'
        '(allow file-write* (literal "/dev/null"))'
        f'(deny file-read* (require-not (require-any {quoted} (literal "/"))))'
    )


def wrap(kind: str, home: str, readable: list[str], argv: list[str]) -> list[str]:
    """`argv` run under the operating-system isolation `kind` (see `isolation()`), `home` its only writable place."""
    if kind == "bwrap":
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--clearenv", "--proc", "/proc", "--dev", "/dev"]
        for d in ("/usr", "/lib", "/lib64", "/lib32", "/bin"):
            if os.path.exists(d):
                cmd += ["--ro-bind", d, d]
        for d in readable:
            cmd += ["--ro-bind", d, d]
        cmd += ["--bind", home, home, "--remount-ro", "/", "--chdir", home]  # the root itself is read-only too
        cmd += ["--setenv", "HOME", home, "--setenv", "TMPDIR", home]
        return [*cmd, "--setenv", "PATH", "/usr/bin:/bin", *argv]
    if kind == "sandbox-exec":
        return ["sandbox-exec", "-p", _mac_profile(home, readable), *argv]
    if kind == "unshare":
        return ["unshare", "-r", "-n", *argv]
    return list(argv)


def rlimits(limits: SandboxLimits):
    def apply() -> None:
        # soft = hard: the code cannot raise them back (the harness also denies setrlimit)
        cpu = limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        if sys.platform.startswith("linux"):
            mem = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- the tests, checked and evaluated here -------------------------------------------------------------------

# Modules a test may import (or name through the solution's `import`): this process's own, never the solution's.
TEST_MODULES = frozenset(
    {"math", "cmath", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "operator",
     "statistics", "fractions", "decimal", "datetime"}
)  # fmt: skip
_SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "bytes", "chr", "complex", "dict", "divmod", "enumerate", "filter", "float",
        "frozenset", "hash", "int", "isinstance", "len", "list", "map", "max", "min", "ord", "pow", "range",
        "repr", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "type", "zip", "Exception",
        "ValueError", "TypeError", "KeyError", "IndexError", "ZeroDivisionError", "AssertionError",
    )
}  # fmt: skip
_ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Assert, ast.Assign, ast.Import, ast.ImportFrom, ast.alias, ast.BoolOp, ast.BinOp,
    ast.UnaryOp, ast.Compare, ast.Call, ast.keyword, ast.Name, ast.Load, ast.Store, ast.Constant, ast.List,
    ast.Tuple, ast.Set, ast.Dict, ast.Subscript, ast.Slice, ast.Attribute, ast.IfExp, ast.ListComp, ast.SetComp,
    ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Starred, ast.JoinedStr, ast.FormattedValue, ast.Lambda,
    ast.arguments, ast.arg, ast.boolop, ast.operator, ast.unaryop, ast.cmpop, ast.expr_context,
)  # fmt: skip
_PLAIN = frozenset(id(t) for t in (type(None), bool, int, float, complex, str, bytes))
_CONTAINERS = frozenset(id(t) for t in (list, tuple, set, frozenset))


class TestSyntaxError(ValueError):
    """A test uses syntax or names the evaluator does not run (the data's fault, not the response's)."""


def check_tests(tests: list[str]) -> list[ast.Module]:
    """Parse the tests and refuse what they may not do here: only expressions, asserts, simple assignments and
    imports of TEST_MODULES; no attribute starting with '_' (no way to reach a class's internals)."""
    parsed = []
    for src in tests:
        try:
            tree = ast.parse(src)
        except SyntaxError as exc:
            raise TestSyntaxError(f"the tests do not parse: {src[:80]!r}: {exc.msg}") from exc
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise TestSyntaxError(
                    f"a test uses {type(node).__name__}, which the evaluator does not run: {src[:80]!r}"
                )
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                raise TestSyntaxError(f"a test reads the attribute {node.attr!r}: {src[:80]!r}")
            if isinstance(node, ast.Name) and node.id.startswith("__"):
                raise TestSyntaxError(f"a test names {node.id!r}: {src[:80]!r}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                bad = [m for m in mods if (m or "").split(".")[0] not in TEST_MODULES]
                if bad:
                    raise TestSyntaxError(f"a test imports {bad[0]!r} (allowed: {', '.join(sorted(TEST_MODULES))})")
            if isinstance(node, ast.Assign) and not all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets):
                raise TestSyntaxError(f"a test assigns to something other than a name: {src[:80]!r}")
        parsed.append(tree)
    return parsed


def plain(value, limit: int = 1_000_000) -> str | None:
    """None when `value` is built of built-in values only (types checked by identity), else what it is."""
    stack, seen, count = [value], set(), 0
    while stack:
        v = stack.pop()
        t = type(v)
        count += 1
        if count > limit:
            return "a value too large to compare"
        if id(t) in _PLAIN:
            continue
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(t) in _CONTAINERS:
            stack.extend(v)
        elif t is dict:
            for k, x in v.items():
                stack += [k, x]
        else:
            return f"a {t.__module__}.{t.__qualname__}"
    return None


def decode_value(value, depth: int = 0):
    """A reply's value as built-in Python values; ValueError for anything that is not a well-formed encoding."""
    if depth > 200:
        raise ValueError("a reply nested too deeply")
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is list:
        return [decode_value(v, depth + 1) for v in value]
    if t is dict and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "$t" and type(body) is list:
            return tuple(decode_value(v, depth + 1) for v in body)
        if tag in ("$s", "$fs") and type(body) is list:
            items = [decode_value(v, depth + 1) for v in body]
            try:
                return set(items) if tag == "$s" else frozenset(items)
            except TypeError as exc:
                raise ValueError(f"a set of unhashable values: {exc}") from exc
        if tag == "$d" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
            try:
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in body}
            except TypeError as exc:
                raise ValueError(f"a dict with unhashable keys: {exc}") from exc
        if tag == "$b" and type(body) is str:
            return base64.b64decode(body, validate=True)
        if tag == "$c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
            return complex(body[0], body[1])
        if tag == "$f" and body in ("nan", "inf", "-inf"):
            return float(body)
    raise ValueError("a reply that is not an encoded built-in value")


class _Gone(Exception):
    """The worker ended or went silent; `status` says how the run is graded."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Worker:
    """The sandboxed process and its two pipes; every read bounded by the run's deadline and a size cap."""

    MAX_REPLY = 16 * 1024 * 1024

    def __init__(self, proc: subprocess.Popen, requests: int, replies: int, deadline: float, limits: SandboxLimits):
        self.proc, self.requests, self.replies, self.deadline, self.limits = proc, requests, replies, deadline, limits
        self.buffer = b""
        self.memory = False

    def read(self) -> dict:
        while b"\n" not in self.buffer:
            left = self.deadline - time.perf_counter()
            if left <= 0:
                raise _Gone("timeout", f"still running after {self.limits.wall_seconds:g} s: killed")
            ready, _, _ = select.select([self.replies], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise self._ended()
            self.buffer += chunk
            if len(self.buffer) > self.MAX_REPLY:
                raise _Gone("error", "a reply larger than 16 MiB: killed")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _Gone("error", f"an unreadable reply ({exc})") from None
        if not isinstance(reply, dict):
            raise _Gone("error", "an unreadable reply")
        if reply.get("memory") is True:
            self.memory = True
        return reply

    def _ended(self) -> _Gone:
        try:
            code = self.proc.wait(timeout=max(0.1, self.deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            return _Gone("timeout", f"still running after {self.limits.wall_seconds:g} s: killed")
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return _Gone("timeout", f"CPU limit ({self.limits.cpu_seconds} s) reached: killed")
        if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return _Gone(
                "timeout", f"killed (the CPU limit's hard stop at {self.limits.cpu_seconds + 1} s, or its own code)"
            )
        if code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
            return _Gone("error", f"wrote more than {self.limits.file_bytes} bytes (output or a file): killed")
        return _Gone("error", f"the code ended (exit status {code}) before its tests were answered")

    def ask(self, request: dict) -> dict:
        try:
            os.write(self.requests, (json.dumps(request) + "\n").encode("utf-8"))
        except (BrokenPipeError, OSError):
            raise self._ended() from None
        return self.read()


class _Remote:
    """A solution's function, as the tests see it: called here, run there, the value decoded here."""

    def __init__(self, worker: _Worker, name: str):
        self._worker, self._name = worker, name

    def __call__(self, *args, **kwargs):
        try:
            request = {"op": "call", "name": self._name, "args": encode_value(list(args)),
                       "kwargs": encode_value(dict(kwargs))}  # fmt: skip
        except TypeError as exc:
            raise _CallFailed(str(exc)) from None
        reply = self._worker.ask(request)
        if "ok" not in reply:
            raise _CallFailed(str(reply.get("err", "the call failed"))[:500])
        try:
            return decode_value(reply["ok"])
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            raise _CallFailed(f"{self._name} returned something unreadable ({exc})") from None

    def __repr__(self) -> str:
        return f"<sandboxed {self._name}>"


_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}  # fmt: skip


class _CallFailed(Exception):
    """A call to the solution raised, or returned something that is not a built-in value."""


def _run_statement(tree: ast.Module, env: dict) -> tuple[bool, str | None]:
    """(passed, why not) of one test: each statement executed or evaluated here."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                env[a.asname or a.name.split(".")[0]] = importlib.import_module(a.name.split(".")[0])
            continue
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for a in node.names:
                env[a.asname or a.name] = getattr(module, a.name)
            continue
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
            # operands evaluated one by one so a failure can show them: `assertion failed: 6 vs 5`
            exprs = [node.test.left, *node.test.comparators]
            values = [eval(compile(ast.Expression(e), "<test>", "eval"), env) for e in exprs]  # noqa: S307
            what = next((w for w in map(plain, values) if w is not None), None)
            if what is not None:
                return False, f"a value in the test is {what} (only built-in values are compared)"
            if not all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.test.ops, values, values[1:])):
                return False, "assertion failed: " + " vs ".join(repr(v)[:200] for v in values)
            continue
        if isinstance(node, ast.Assert):
            value = eval(compile(ast.Expression(node.test), "<test>", "eval"), env)  # noqa: S307 (checked tests)
            what = plain(value)
            if what is not None:
                return False, f"the test's value is {what} (only built-in values are compared)"
            if not value:
                return False, "assertion failed"
            continue
        exec(compile(ast.Module([node], []), "<test>", "exec"), env)  # noqa: S102 (checked tests)
    return True, None


def run_python_tests(
    response: str, tests: list[str], limits: SandboxLimits | None = None, setup: str = ""
) -> CodeVerdict:
    """Run `response`'s code (fenced blocks or the whole text) in the sandbox and check it with `tests`
    (MBPP-style statements; `setup`: statements run first, e.g. imports). Never raises for anything the code does;
    a test the evaluator cannot run (TestSyntaxError) is the data's fault and is reported as an error verdict."""
    limits = limits or SandboxLimits()
    kind = isolation()
    t0 = time.perf_counter()
    try:
        parsed = check_tests(([setup] if setup else []) + list(tests))
    except TestSyntaxError as exc:
        return CodeVerdict("error", time.perf_counter() - t0, str(exc), 0, len(tests), kind)
    if not tests:
        return CodeVerdict("failed", time.perf_counter() - t0, "no tests: nothing shows the code is right", 0, 0, kind)
    if kind in WEAK and not limits.allow_weak_isolation:
        return CodeVerdict("error", time.perf_counter() - t0, WEAK_MESSAGE, 0, len(tests), kind)
    exe, readable = interpreter()
    tmp = tempfile.mkdtemp(prefix="realign-sandbox-")
    try:
        return _run_in(tmp, kind, exe, readable, response, parsed, len(tests), bool(setup), limits, t0)
    finally:
        _remove_tree(tmp)


def _remove_tree(path: str) -> None:
    """Remove the sandbox directory whatever the code left there (deep trees, odd permissions)."""
    try:
        shutil.rmtree(path)
    except BaseException:  # noqa: BLE001  (RecursionError on a very deep tree, PermissionError, ...)
        subprocess.run(["rm", "-rf", "--", path], capture_output=True, timeout=120)


def _run_in(tmp, kind, exe, readable, response, parsed, n, has_setup, limits, t0) -> CodeVerdict:
    home = os.path.realpath(tmp)
    os.chmod(home, 0o700)
    shutil.copyfile(WORKER, Path(home) / "_worker.py")
    (Path(home) / "solution.py").write_text(extract_code(response), encoding="utf-8")
    output_path = Path(home) / ".output"
    out_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    argv = [exe, "-I", "-S", "-B", "-u", str(Path(home) / "_worker.py"), str(req_r), str(rep_w)]
    try:
        proc = subprocess.Popen(
            wrap(kind, home, readable, argv),
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=out_fd,
            pass_fds=(req_r, rep_w),
            cwd=home,
            env={"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LC_ALL": "C.UTF-8"},
            start_new_session=True,  # its own process group: killed whole at the end
            preexec_fn=rlimits(limits),
        )
    except OSError as exc:
        for fd in (out_fd, req_r, req_w, rep_r, rep_w):
            os.close(fd)
        return CodeVerdict("error", time.perf_counter() - t0, f"could not start the sandbox: {exc}", 0, n, kind)
    for fd in (out_fd, req_r, rep_w):
        os.close(fd)
    worker = _Worker(proc, req_w, rep_r, t0 + limits.wall_seconds, limits)
    results: list[dict] = []
    status, detail = "passed", ""
    try:
        first = worker.read()
        if "load_error" in first:
            status, detail = ("memory" if first.get("memory") else "error"), str(first["load_error"])[:500]
        else:
            env = _test_env(worker)
            for i, tree in enumerate(parsed):
                is_setup = has_setup and i == 0
                try:
                    ok, why = _run_statement(tree, env)
                except _Gone:
                    raise
                except _CallFailed as exc:
                    ok, why = False, str(exc)
                except Exception as exc:  # noqa: BLE001  (a test that raises here is a failed test)
                    ok, why = False, f"{type(exc).__name__}: {exc}"[:500]
                if not is_setup:
                    results.append({"test": ast.unparse(tree), "ok": ok, "message": why})
                elif not ok:
                    status, detail = "error", f"the setup failed: {why}"
                    break
            if status == "passed":
                failed = [r for r in results if not r["ok"]]
                if worker.memory and failed:
                    status, detail = "memory", f"out of memory (limit {limits.memory_mb} MiB)"
                elif failed:
                    status, detail = "failed", f"{failed[0]['test']}: {failed[0]['message']}"
    except _Gone as gone:
        status, detail = gone.status, gone.detail
    finally:
        _kill_group(proc)  # whatever it forked dies with it
        for fd in (req_w, rep_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    size = output_path.stat().st_size if output_path.is_file() else 0
    with open(output_path, "rb") if output_path.is_file() else open(os.devnull, "rb") as fh:
        shown = fh.read(1024).decode("utf-8", "replace")
    if size > limits.output_bytes and status == "passed":
        status, detail = "error", f"printed more than {limits.output_bytes} bytes"
    elif size > limits.output_bytes:
        detail = f"{detail}; printed more than {limits.output_bytes} bytes"
    passed = sum(r["ok"] for r in results)
    return CodeVerdict(status, time.perf_counter() - t0, detail[:500], passed, n, kind, shown, results)


def _test_env(worker: _Worker) -> dict:
    """The tests' globals: safe builtins, the solution's names as proxies (functions) or values, and for a module
    the solution imported, this process's own module of that name (allowed ones only)."""
    env: dict = {"__builtins__": dict(_SAFE_BUILTINS)}
    names = worker.ask({"op": "names"}).get("ok")
    if not isinstance(names, dict):
        raise _Gone("error", "an unreadable reply to the names request")
    for name, what in names.items():
        if not isinstance(name, str) or not name.isidentifier() or name in _SAFE_BUILTINS:
            continue  # a solution's own `set` or `len` must not stand in for the builtin the tests call
        if what == "call":
            env[name] = _Remote(worker, name)
        elif isinstance(what, str) and what.startswith("module:"):
            module = what.split(":", 1)[1].split(".")[0]
            if module in TEST_MODULES:
                env[name] = importlib.import_module(module)
        elif what == "value":
            reply = worker.ask({"op": "get", "name": name})
            try:
                env[name] = decode_value(reply["ok"]) if "ok" in reply else None
            except (ValueError, TypeError, RecursionError):
                pass  # not a built-in value: the tests cannot use it
    return env
