"""Run an untrusted response's Python code against its tests, in a sandbox, and say whether it passed.

Layers, outermost first (each one alone should hold; together they must):
1. The operating system. Linux: bubblewrap (`bwrap`) when installed: new user, PID, network, IPC and UTS
   namespaces, a read-only view of the Python installation and system libraries only, the response's own
   temporary directory the only writable (and the only other readable) place; without bwrap, `unshare -n` (no
   network) where it works. macOS: `sandbox-exec` with a profile denying network, process creation and writes
   outside the directory. Always: a new process group, rlimits (CPU seconds, address space, file size, open
   files, no core dumps), a wall-clock deadline, and every process of the group killed at the end.
2. The harness (`_harness.py`): an audit hook denies processes, signals, sockets, ctypes, frame and gc
   introspection and writes outside the directory; it compares results itself, with built-in operators on
   built-in values, and reports on a private pipe behind a nonce, so a response cannot fake passing by exiting 0
   early, `os._exit`, replacing AssertionError, returning an object whose __eq__ is always true, or printing a
   success marker. The verdict is "passed" only when that report arrives and every test in it passed.
3. This process: reads at most `output_bytes` of the response's output and kills it beyond that; never waits
   past the deadline; a response cannot signal it (its own PID namespace or the audit hook).
"""

from __future__ import annotations

import ast
import os
import re
import resource
import secrets
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

Status = Literal["passed", "failed", "timeout", "memory", "error"]
HARNESS = Path(__file__).with_name("_harness.py")


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


def run_python_tests(
    response: str, tests: list[str], limits: SandboxLimits | None = None, setup: str = ""
) -> CodeVerdict:
    """Run `response`'s code (fenced blocks or the whole text) and then `tests` (MBPP-style assert statements;
    `setup`: code run before them, e.g. imports) in a sandbox. Never raises for anything the code does."""
    limits = limits or SandboxLimits()
    kind = isolation()
    exe, readable = interpreter()
    t0 = time.perf_counter()
    # ignore_cleanup_errors: a response must not be able to make cleaning up raise here (e.g. an immutable file)
    with tempfile.TemporaryDirectory(prefix="realign-sandbox-", ignore_cleanup_errors=True) as tmp:
        home = os.path.realpath(tmp)
        os.chmod(home, 0o700)
        shutil.copyfile(HARNESS, Path(home) / "_harness.py")
        (Path(home) / "solution.py").write_text(extract_code(response), encoding="utf-8")
        (Path(home) / "tests.json").write_text(_json([setup, *tests] if setup else list(tests)), encoding="utf-8")
        (Path(home) / "sandbox.json").write_text(_json({"dir": home, "read_roots": readable}), encoding="utf-8")
        nonce = secrets.token_hex(16).encode()
        result_r, result_w = os.pipe()
        try:
            proc = subprocess.Popen(
                wrap(kind, home, readable, [exe, "-I", "-S", "-B", str(Path(home) / "_harness.py"), str(result_w)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_w,),
                cwd=home,
                env={"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LC_ALL": "C.UTF-8"},
                start_new_session=True,  # its own process group: killed whole at the end
                preexec_fn=rlimits(limits),
            )
        except OSError as exc:
            os.close(result_r)
            os.close(result_w)
            return CodeVerdict("error", time.perf_counter() - t0, f"could not start the sandbox: {exc}", isolation=kind)
        os.close(result_w)
        try:
            proc.stdin.write(nonce + b"\n")  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        output, report, timed_out, flooded = _collect(proc, result_r, limits, t0)
        _kill_group(proc)  # whatever it forked dies with it
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        seconds = time.perf_counter() - t0
    shown = output[:1024].decode("utf-8", "replace")
    try:
        verdict = _judge(nonce, report, proc.returncode, timed_out, flooded, limits, len(tests))
    except Exception as exc:  # whatever the report holds, grading goes on: an unreadable report is not a pass
        verdict = CodeVerdict("error", 0, f"the harness's report cannot be read ({exc}): not trusted")
    verdict.seconds, verdict.isolation, verdict.output = seconds, kind, shown
    return verdict


def _json(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _collect(proc: subprocess.Popen, result_r: int, limits: SandboxLimits, t0: float):
    """Read output (up to the cap) and the result pipe until both close or the deadline passes."""
    out_fd = proc.stdout.fileno()  # type: ignore[union-attr]
    output, report = bytearray(), bytearray()
    open_fds = {out_fd, result_r}
    timed_out = flooded = False
    while open_fds:
        left = limits.wall_seconds - (time.perf_counter() - t0)
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.5))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out_fd:
                output += chunk
                if len(output) > limits.output_bytes:
                    flooded = True
            elif len(report) < 4 * limits.output_bytes:
                report += chunk
        if flooded:
            break
    os.close(result_r)
    proc.stdout.close()  # type: ignore[union-attr]
    if not timed_out and not flooded:
        try:  # both pipes closed: the process is ending; give it until the deadline
            proc.wait(timeout=max(0.1, limits.wall_seconds - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
    return bytes(output), bytes(report), timed_out, flooded


def _judge(
    nonce: bytes, report: bytes, code: int | None, timed_out: bool, flooded: bool, limits: SandboxLimits, n: int
) -> CodeVerdict:
    payload = None
    for line in report.split(b"\n"):
        if line.startswith(nonce + b" "):
            try:
                payload = ast.literal_eval(line[len(nonce) + 1 :].decode("utf-8"))
            except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
                payload = None
            break
    if flooded:
        return CodeVerdict("error", 0, f"printed more than {limits.output_bytes} bytes: killed", tests_total=n)
    if not isinstance(payload, dict):
        if timed_out:
            return CodeVerdict("timeout", 0, f"still running after {limits.wall_seconds:g} s: killed", tests_total=n)
        if code in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            return CodeVerdict("timeout", 0, f"CPU limit ({limits.cpu_seconds} s) reached: killed", tests_total=n)
        return CodeVerdict("error", 0, f"ended (exit status {code}) without reporting test results", tests_total=n)
    tests = payload.get("tests", [])
    well_formed = isinstance(tests, list) and all(
        isinstance(t, dict) and isinstance(t.get("ok"), bool) and isinstance(t.get("test", ""), str) for t in tests
    )
    if not well_formed or not isinstance(payload.get("setup_error", ""), (str, type(None))):
        return CodeVerdict("error", 0, "the harness's report is malformed (forged?): not trusted", tests_total=n)
    if payload.get("memory"):
        status: Status = "memory"
    elif payload.get("setup_error"):
        status = "error"
    else:
        status = "passed" if tests and all(t.get("ok") is True for t in tests) and len(tests) >= n else "failed"
    failed = [t for t in tests if t.get("ok") is not True]
    detail = str(payload.get("setup_error") or "")
    if not detail and failed:
        detail = f"{failed[0].get('test', '')}: {failed[0].get('message', '')}"
    if status == "memory" and not detail:
        detail = f"out of memory (limit {limits.memory_mb} MiB)"
    return CodeVerdict(
        status, 0, detail[:500], sum(t.get("ok") is True for t in tests), max(n, len(tests)), tests=tests
    )
