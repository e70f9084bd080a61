"""Runs one response's Python code against its tests inside the sandbox (copied there and run as a script).

Trust model: the response's code runs in this process, so everything it could reach is treated as hostile. The
harness therefore
1. decides pass/fail itself, from values it compares with the built-in operators, never with an `assert` statement
   or an object's own __eq__ / __bool__: a value counts only when it is built of built-in types, checked by the
   types' identity (a metaclass's __eq__ cannot claim to be int);
2. reports on a private pipe, prefixed with a nonce that only this function's local variables hold (frame and gc
   introspection is denied by an audit hook, /proc is out of reach), so printing a success marker, exiting early or
   writing to the pipe proves nothing; the parent trusts only a well-formed report;
3. keeps its own references to every function it uses; restores every module's namespace and sys.modules before
   each test and each operand of a test, and gives the tests a private copy of the builtins (and none of the
   solution's names that shadow one), so monkey-patching is undone;
4. deletes the tests, the solution and its own files before the response runs (it cannot answer from them);
5. denies processes (also `_posixsubprocess.fork_exec`, which raises no audit event), threads, signals (also
   pidfds), sockets, ctypes, ioctl, links, opening directories outside its own (dir_fd escapes) and writes outside
   it, through an audit hook and by replacing the functions that have no event; a module loaded before the
   response ran cannot be imported again (that would bring a replaced function back);
all on top of the operating system's isolation (namespaces / sandbox-exec, rlimits) that the parent sets up.
Found by a review that attacked each layer (README, "The code sandbox"); the responses it used are test cases in
realign.data.code_tasks.

Protocol: `python -I -S -B _harness.py RESULT_FD`; the nonce arrives on stdin; solution.py and tests.json (a list of
test strings, MBPP style) and sandbox.json (the directory the code may write to, the roots it may read) lie in the
working directory. Exactly one line goes to RESULT_FD: `<nonce hex> <repr of a dict>`, then the process ends with
os._exit.
"""

# Modules a solution commonly imports (bisect ... string) are loaded here, so their namespaces are snapshotted and
# restored like every other module's.
import _posixsubprocess
import _thread
import ast
import bisect  # noqa: F401
import builtins
import collections  # noqa: F401
import functools  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator
import os
import re  # noqa: F401
import signal
import stat
import string  # noqa: F401
import subprocess  # noqa: F401  (loads _posixsubprocess, whose fork_exec is replaced below)
import sys


def main() -> None:
    _type, _id, _len, _str, _repr, _bool = type, id, len, str, repr, bool
    _list, _dict, _tuple, _set, _frozenset = list, dict, tuple, set, frozenset
    _write, _exit, _read, _close, _open_fd = os.write, os._exit, os.read, os.close, os.open
    _loads, _compile, _eval, _exec = json.loads, compile, eval, exec
    _isinstance, _vars, _items = isinstance, vars, dict.items
    _dclear, _dupdate, _dcopy = dict.clear, dict.update, dict.copy
    _normpath = os.path.normpath
    _startswith = str.startswith
    _BaseException, _MemoryError, _SystemExit, _RecursionError = BaseException, MemoryError, SystemExit, RecursionError
    _KeyboardInterrupt = KeyboardInterrupt
    _PermissionError, _ValueError = PermissionError, ValueError
    _int, _bytes, _any, _all, _zip, _next = int, bytes, any, all, zip, next
    _split, _sjoin, _decode = str.split, str.join, bytes.decode
    _stat, _S_ISDIR, _remove = os.stat, stat.S_ISDIR, os.remove

    _flush_out, _flush_err = sys.stdout.flush, sys.stderr.flush
    result_fd = int(sys.argv[1])
    nonce = _read(0, 64).strip()
    _close(0)
    _open_fd(os.devnull, os.O_RDONLY)  # fd 0 again, so input() fails cleanly instead of reading the nonce pipe

    with open("sandbox.json", encoding="utf-8") as fh:
        box = _loads(fh.read())
    with open("tests.json", encoding="utf-8") as fh:
        test_sources = _loads(fh.read())
    with open("solution.py", encoding="utf-8") as fh:
        solution_source = fh.read()
    home = _normpath(box["dir"])
    readable = [_normpath(p) for p in box["read_roots"]] + [home]
    for name in ("sandbox.json", "tests.json", "solution.py", "_harness.py"):
        _remove(name)  # the response must not read its tests (and answer from them) or the harness's plan

    def report(payload: dict) -> None:
        for flush in (_flush_out, _flush_err):
            try:
                flush()  # what the code printed, for the report (the verdict does not depend on it)
            except _BaseException:
                pass
        # repr of a dict of built-in values (the parent reads it with ast.literal_eval): C code only, nothing the
        # response could have patched in a module is called on the way out.
        _write(result_fd, nonce + b" " + _repr(payload).encode("utf-8", "backslashreplace") + b"\n")
        _exit(0)  # no atexit handlers, finalizers or threads of the response run after the verdict

    # --- the tests, parsed before any response code runs -------------------------------------------------------
    ops = {
        ast.Eq: operator.eq,
        ast.NotEq: operator.ne,
        ast.Lt: operator.lt,
        ast.LtE: operator.le,
        ast.Gt: operator.gt,
        ast.GtE: operator.ge,
        ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b,
        ast.Is: operator.is_,
        ast.IsNot: operator.is_not,
    }
    plan = []  # (kind, source, compiled parts)
    try:
        for src in test_sources:
            for node in ast.parse(src).body:
                text = ast.get_source_segment(src, node) or src
                if _isinstance(node, ast.Assert) and _isinstance(node.test, ast.Compare):
                    exprs = [node.test.left, *node.test.comparators]
                    codes = [_compile(ast.Expression(e), "<test>", "eval") for e in exprs]
                    plan.append(("compare", text, (codes, [ops[_type(o)] for o in node.test.ops])))
                elif _isinstance(node, ast.Assert):
                    plan.append(("truth", text, _compile(ast.Expression(node.test), "<test>", "eval")))
                else:
                    plan.append(("exec", text, _compile(ast.Module([node], []), "<test>", "exec")))
    except (SyntaxError, KeyError, _ValueError) as exc:
        report({"setup_error": f"the tests do not parse: {_type(exc).__name__}: {exc}"})

    # ids, compared by identity: `t in (int, ...)` would call a metaclass's __eq__, which can claim to be int
    plain_types = _frozenset(_id(t) for t in (int, float, complex, str, bytes, bool, _type(None)))
    containers = _frozenset(_id(t) for t in (_list, _tuple, _set, _frozenset))

    def plain(value) -> str | None:
        """None when `value` is built of built-in values only (whose comparisons cannot lie), else what it is."""
        stack, seen, count = [value], _set(), 0
        while stack:
            v = stack.pop()
            t = _type(v)
            count += 1
            if count > 1_000_000:
                return "a value too large to compare"
            if _id(t) in plain_types:
                continue
            if _id(v) in seen:
                continue
            seen.add(_id(v))
            if _id(t) in containers:
                stack.extend(v)
            elif t is _dict:
                for k, x in _items(v):
                    stack.append(k)
                    stack.append(x)
            else:
                return f"a {t.__module__}.{t.__qualname__} (only built-in values are compared)"
        return None

    # --- the audit hook: what the response may not do, whatever the operating system allows --------------------
    denied = {
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
        "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
        "socket.getaddrinfo", "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
        "ctypes.call_function", "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.setuid",
        "winreg.OpenKey", "webbrowser.open", "urllib.Request", "ftplib.connect", "http.client.connect",
        "smtplib.connect", "telnetlib.Telnet.open", "os.chroot", "mmap.__new__",
        "fcntl.ioctl", "fcntl.fcntl", "os.symlink", "os.link",
    }  # fmt: skip
    introspection = {
        "sys._getframe", "sys._current_frames", "sys._current_exceptions", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.settrace", "sys.setprofile", "sys._getframemodulename",
    }  # fmt: skip
    frame_attrs = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "gi_yieldfrom"}
    path_events = {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
        "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "shutil.rmtree",
        "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move", "shutil.chown", "os.mkfifo",
        "os.mknod", "os.chdir",
    }  # fmt: skip
    read_events = {"os.listdir", "os.scandir", "glob.glob", "os.getxattr", "os.listxattr"}
    # a module loaded before the response ran cannot be imported again (a re-import would bring back what was
    # replaced below); the others are native-code and process routes the audit hook cannot see into
    blocked_imports = {"ctypes", "_ctypes", "cffi", "_xxsubinterpreters", "_posixshmem", "multiprocessing"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def norm(path) -> str | None:
        """An absolute, '..'-free path, by string operations only (os.path can be patched by the response).
        Relative paths are taken from `home`: the working directory can only move below it, so a path that
        stays inside from `home` stays inside from there too."""
        if _type(path) is _bytes:
            path = _decode(path, "utf-8", "surrogateescape")
        if _type(path) is not _str:
            return None
        parts = []
        for part in _split(path if _startswith(path, "/") else home + "/" + path, "/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + _sjoin("/", parts)

    def inside(path, roots) -> bool:
        if _type(path) is _int:
            return True  # an already open descriptor
        p = norm(path)
        return p is not None and _any(p == r or _startswith(p, r + "/") for r in roots)

    def hook(event: str, args: tuple) -> None:
        if event in denied:
            raise _PermissionError(f"sandbox: {event} is not allowed")
        if event in introspection:
            raise _ValueError(f"sandbox: {event} is not allowed")  # stdlib callers of _getframe handle ValueError
        if event == "object.__getattr__" and args[1] in frame_attrs:
            raise _ValueError(f"sandbox: reading {args[1]} is not allowed")
        if event == "import" and (args[0] in blocked_imports or args[0] in loaded_at_start):
            raise _PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (_type(mode) is _str and _any(c in mode for c in "wax+")) or (
                _type(flags) is _int and flags & write_flags
            )
            if not inside(path, [home] if writing else readable):
                raise _PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path} is not allowed")
            if not inside(path, [home]) and _type(path) is not _int:
                try:
                    is_dir = _S_ISDIR(_stat(path).st_mode)
                except _BaseException:
                    is_dir = False
                if is_dir:  # a directory descriptor would make `dir_fd=` paths escape the checks above
                    raise _PermissionError(f"sandbox: opening the directory {path} is not allowed")
        if event in path_events:
            for p in args[:2] if event in ("os.rename", "os.link", "shutil.move", "shutil.copyfile") else args[:1]:
                if not inside(p, [home]):
                    raise _PermissionError(f"sandbox: {event} on {p} is not allowed")
        if event in read_events and args and not inside(args[0], readable):
            raise _PermissionError(f"sandbox: {event} on {args[0]} is not allowed")

    # No threads: one could re-patch a module between a restore and the test that uses it.
    def no_threads(*args, **kwargs):
        raise _PermissionError("sandbox: threads are not allowed")

    _thread.start_new_thread = _thread.start_new = no_threads
    if "threading" in sys.modules:  # imported by subprocess, with its own reference to the original
        sys.modules["threading"]._start_new_thread = no_threads

    def denied_call(what: str):
        def deny(*args, **kwargs):
            raise _PermissionError(f"sandbox: {what} is not allowed")

        return deny

    # Routes to processes and signals that raise no audit event: replaced in every module that holds them.
    _posixsubprocess.fork_exec = denied_call("_posixsubprocess.fork_exec")
    for module in (os, sys.modules.get("posix")):
        if module is not None and hasattr(module, "pidfd_open"):
            module.pidfd_open = denied_call("os.pidfd_open")
    for name in ("pidfd_send_signal", "pthread_kill", "raise_signal"):
        if hasattr(signal, name):
            setattr(signal, name, denied_call(f"signal.{name}"))

    # Every module's namespace as it is now, and sys.modules itself; restored after the solution runs and before
    # every test and every operand of a test.
    modules = sys.modules
    loaded_at_start = _frozenset(modules)
    modules_saved = _dcopy(modules)
    snapshot = [(_vars(m), _dcopy(_vars(m))) for m in _list(modules.values()) if m is not None]
    test_builtins = _dcopy(_vars(builtins))  # the tests' own builtins: a dict no response code can reach

    def restore() -> None:
        _dclear(modules)
        _dupdate(modules, modules_saved)
        for namespace, saved in snapshot:
            _dclear(namespace)
            _dupdate(namespace, saved)

    def describe(exc) -> str:
        """`Type: message` of an exception the response raised (its __str__ is the response's code too)."""
        try:
            return f"{_type(exc).__name__}: {_str(exc)[:300]}"
        except _BaseException:
            return "an exception that cannot be printed"

    sys.addaudithook(hook)

    # --- the solution ------------------------------------------------------------------------------------------
    memory = False
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        _exec(_compile(solution_source, "solution.py", "exec"), namespace)
    except _MemoryError:
        report({"memory": True, "setup_error": "the solution ran out of memory while loading"})
    except _SystemExit:
        report({"setup_error": "the solution called exit() before the tests ran"})
    except (_BaseException, _KeyboardInterrupt) as exc:
        report({"setup_error": f"the solution does not load: {describe(exc)}"})

    # --- the tests ---------------------------------------------------------------------------------------------
    results = []
    for kind, text, compiled in plan:
        restore()
        # the solution's names (its functions keep their own globals), but not ones that shadow a builtin the tests
        # call (a solution's own `set` would make both sides of `set(f(x)) == set(y)` whatever it likes)
        env = {k: v for k, v in _items(namespace) if k not in test_builtins}
        env["__builtins__"] = test_builtins
        try:
            if kind == "exec":
                _exec(compiled, env)
                results.append({"test": text, "ok": True})
                continue
            if kind == "truth":
                values = [_eval(compiled, env)]
            else:
                codes, fns = compiled
                values = []
                for c in codes:
                    restore()  # a call in one operand may have patched a module the next one uses
                    values.append(_eval(c, env))
            restore()
            what = _next((w for w in (plain(v) for v in values) if w is not None), None)
            if what is not None:
                results.append({"test": text, "ok": False, "message": f"returned {what}"})
                continue
            if kind == "truth":
                ok = _bool(values[0])
            else:
                ok = _all(_bool(fn(a, b)) for fn, a, b in _zip(fns, values, values[1:]))
            message = None if ok else "assertion failed: " + " vs ".join(_repr(v)[:200] for v in values)
            results.append({"test": text, "ok": ok, "message": message})
        except _MemoryError:
            memory = True
            results.append({"test": text, "ok": False, "message": "out of memory"})
        except _RecursionError:
            results.append({"test": text, "ok": False, "message": "RecursionError: maximum recursion depth"})
        except (_BaseException, _KeyboardInterrupt) as exc:
            results.append({"test": text, "ok": False, "message": describe(exc)})
    restore()
    report({"tests": results, "memory": memory})


if __name__ == "__main__":
    main()
