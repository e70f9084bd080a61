"""Runs one response's Python code inside the sandbox and answers calls to it; holds no secret and decides nothing.

Protocol (`python -I -S -B _worker.py REQUEST_FD REPLY_FD`, solution.py in the working directory): the worker loads
the solution, then answers one JSON line per request line:
  {"op": "names"}                          -> {"ok": {name: "call" | "value"}} (the solution's top-level names)
  {"op": "get", "name": N}                 -> {"ok": <value>}
  {"op": "call", "name": N, "args": [...], "kwargs": {...}}  -> {"ok": <value>} or {"err": "Type: message"}
Values cross as tagged JSON (realign.score.sandbox decodes them). Everything here runs in the same process as the
response's code, so nothing here is trusted: the parent evaluates the tests and compares the values itself, and a
reply it cannot decode into built-in values is a failed call. The audit hook below only limits side effects (the
operating system's isolation is what contains them); it is defence in depth, not the verdict's guarantee.
"""

import _posixsubprocess
import base64
import builtins
import json
import math
import os
import subprocess
import sys

DENIED = {
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
    "socket.getaddrinfo", "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
    "ctypes.call_function", "resource.setrlimit", "resource.prlimit", "os.setuid", "os.chroot", "mmap.__new__",
    "fcntl.ioctl", "os.symlink", "os.link", "sqlite3.connect", "sqlite3.enable_load_extension", "webbrowser.open",
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect",
}  # fmt: skip
BLOCKED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_xxsubinterpreters", "_posixshmem", "multiprocessing", "sqlite3"}


def encode(value, depth: int = 0):
    """Tagged JSON of a built-in value; TypeError for anything else (only built-in values are compared)."""
    if depth > 200:
        raise TypeError("a value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else {"$f": repr(value)}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"$t": [encode(v, depth + 1) for v in value]}
    if t is set or t is frozenset:
        return {"$s" if t is set else "$fs": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"$d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is bytes:
        return {"$b": base64.b64encode(value).decode()}
    if t is complex:
        return {"$c": [encode(value.real), encode(value.imag)]}
    raise TypeError(f"a {t.__module__}.{t.__qualname__} (only built-in values are compared)")


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        ((tag, body),) = value.items()
        if tag == "$t":
            return tuple(decode(v) for v in body)
        if tag in ("$s", "$fs"):
            items = [decode(v) for v in body]
            return set(items) if tag == "$s" else frozenset(items)
        if tag == "$d":
            return {decode(k): decode(v) for k, v in body}
        if tag == "$b":
            return base64.b64decode(body)
        if tag == "$c":
            return complex(body[0], body[1])
        if tag == "$f":
            return float(body)
        raise ValueError(f"unknown tag {tag}")
    return value


def main() -> None:
    request_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    home = os.getcwd()
    readable = [os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix, sys.prefix}] + [home]
    with open("solution.py", encoding="utf-8") as fh:
        source = fh.read()
    for name in ("solution.py", "_worker.py"):
        os.remove(name)
    requests = os.fdopen(request_fd, "r", encoding="utf-8")
    write, dumps, loads, readline = os.write, json.dumps, json.loads, requests.readline

    def reply(obj: dict) -> None:
        write(reply_fd, (dumps(obj) + "\n").encode("utf-8"))

    def norm(path) -> str | None:
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not isinstance(path, str):
            return None
        parts: list[str] = []
        for part in (path if path.startswith("/") else home + "/" + path).split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def inside(path, roots) -> bool:
        if type(path) is int:
            return True
        p = norm(path)
        return p is not None and any(p == r or p.startswith(r + "/") for r in roots)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if event in DENIED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if not inside(path, [home] if writing else readable):
                raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path} is not allowed")

    # Routes to processes and signals without an audit event, replaced (defence in depth, see the docstring).
    def denied(*args, **kwargs):
        raise PermissionError("sandbox: creating processes or sending signals is not allowed")

    _posixsubprocess.fork_exec = subprocess._fork_exec = denied
    os.pidfd_open = denied
    sys.addaudithook(hook)
    namespace: dict = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except MemoryError:
        reply({"load_error": "the solution ran out of memory while loading", "memory": True})
        return
    except SystemExit:
        reply({"load_error": "the solution called exit() while loading"})
        return
    except BaseException as exc:  # noqa: BLE001  (the solution's failure, reported)
        reply({"load_error": f"the solution does not load: {type(exc).__name__}: {exc}"[:500]})
        return
    reply({"ready": True})
    while line := readline():
        try:
            req = loads(line)
            name = req.get("name")
            if req["op"] == "names":
                out = {}
                for k, v in namespace.items():
                    if not k.startswith("__"):
                        is_module = type(v) is type(sys)
                        out[k] = f"module:{v.__name__}" if is_module else "call" if callable(v) else "value"
                reply({"ok": out})
                continue
            target = namespace[name]
            if req["op"] == "get":
                reply({"ok": encode(target)})
                continue
            result = target(*decode(req["args"]), **decode(req["kwargs"]))
            reply({"ok": encode(result)})
        except MemoryError:
            reply({"err": "MemoryError: out of memory", "memory": True})
        except RecursionError:
            reply({"err": "RecursionError: maximum recursion depth exceeded"})
        except BaseException as exc:  # noqa: BLE001  (a test's call failing is a failed test, not a crash)
            try:
                reply({"err": f"{type(exc).__name__}: {exc}"[:500]})
            except BaseException:  # noqa: BLE001
                reply({"err": "an exception that cannot be printed"})
    os._exit(0)


if __name__ == "__main__":
    main()
