"""Nothing left behind: when a realign command dies (even by SIGKILL), stop every process it started.

The command puts a session id in its environment (REALIGN_SESSION) before it starts a Prefect server, workers or
Prefect's temporary API server; every process they start inherits it. A watchdog process holds the read end of a
pipe whose only write end the command keeps: when the command dies, however it dies, the kernel closes that end
and the watchdog reads end-of-file (no PID polling, so a dead command not yet reaped, or a PID reused, cannot fool
it). It then sends SIGTERM to every process that carries the id, and SIGKILL to what remains.
Linux reads /proc/PID/environ; macOS reads `ps -E` (environment after the command).

    python -m realign.cli.watchdog PIPE_FD SESSION_ID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ENV = "REALIGN_SESSION"


def session_pids(session: str) -> list[int]:
    """PIDs of this user's processes whose environment carries REALIGN_SESSION=session (this process excluded)."""
    marker = f"{ENV}={session}".encode()
    me, found = os.getpid(), []
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                env = (entry / "environ").read_bytes()
            except OSError:  # gone, or not ours
                continue
            if marker in env.split(b"\0"):
                found.append(int(entry.name))
        return found
    out = subprocess.run(["ps", "-E", "-ww", "-A", "-o", "pid=,command="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, rest = line.strip().partition(" ")
        if pid.isdigit() and int(pid) != me and f" {ENV}={session}" in f" {rest}":
            found.append(int(pid))
    return found


def stop_session(session: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every process of the session, SIGKILL what is left after `grace_s`; returns the PIDs it signalled."""
    pids = session_pids(session)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_pids(session):
        time.sleep(0.2)
    for pid in session_pids(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


_KEEP: list[int] = []


def start_watchdog() -> str:
    """Give this process a new session id and a watchdog; returns the id. Call before starting any server or
    worker, so they inherit it. (A realign command started inside another one's session gets its own id, so its
    watchdog never stops the outer session; tests choose the id with REALIGN_NEW_SESSION.)"""
    session = os.environ.pop("REALIGN_NEW_SESSION", "") or uuid.uuid4().hex
    os.environ[ENV] = session
    read_end, write_end = os.pipe()
    # Its own session: a Ctrl-C to the terminal stops the command, which stops its children itself; the watchdog
    # is for the deaths that skip that (SIGKILL, a closed terminal, out of memory).
    subprocess.Popen(
        [sys.executable, "-m", "realign.cli.watchdog", str(read_end), session],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        pass_fds=(read_end,),
        env={k: v for k, v in os.environ.items() if k != ENV},  # not a member of the session it guards
    )
    os.close(read_end)
    _KEEP.append(write_end)  # open until this process ends; children do not inherit it (PEP 446)
    return session


def main(argv: list[str]) -> int:
    pipe, session = int(argv[0]), argv[1]
    while True:
        try:
            if not os.read(pipe, 1):  # end-of-file: the command is gone
                break
        except InterruptedError:
            continue
    stop_session(session)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
