"""A local Prefect stack for realign: server on 127.0.0.1 (SQLite), work pools, deployments, workers.

The API accepts browser calls only from the UI's own origin and asks for Prefect's CSRF token on changes; bound
beyond loopback (`host`), it requires an auth string.

Used by `realign server` / `make server` and by the integration and browser tests. It drives the
`prefect` CLI in subprocesses (so realign itself still never imports prefect), keeps every process
it started, and stops them all on `stop()` or when used as a context manager.

    with LocalPrefect(home=".prefect-local", repo=".") as stack:
        stack.start_server(); stack.create_pools(["realign", "m4-max"]); stack.deploy()
        stack.start_worker("realign")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Every pool a deployment in prefect.yaml names: workflows run on `realign`, shards on the machine pools.
POOLS = ("realign", "m4-max", "m3-ultra")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def who_listens(port: int, host: str = "127.0.0.1") -> str | None:
    """What answers on host:port ('a Prefect server', 'an HTTP server (Server: ...)', ...), or None when the port
    is free. Starting a second server there would send this stack's deployments to the other one."""
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        return None
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/health", timeout=2) as r:
            if r.status == 200:
                return "a Prefect server (its /api/health answers)"
    except urllib.error.HTTPError as exc:
        return f"an HTTP server ({exc.headers.get('Server') or 'no Server header'}, /api/health: {exc.code})"
    except (OSError, ValueError):
        return "a program that does not speak HTTP"
    return "an HTTP server"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_timezone() -> str:
    """This machine's IANA timezone name (e.g. 'Europe/Berlin'), or 'UTC' when it cannot be told."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz:
        return tz
    try:
        link = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in link:
            return link.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


class StackError(RuntimeError):
    """A part of the local stack did not start; the message says which, and where its log is."""


class LocalPrefect:
    """Processes of one local Prefect stack. home: its PREFECT_HOME (database, logs); repo: the checkout
    deployments run from (REALIGN_HOME); storage: where task results are persisted (so retries reuse them)."""

    def __init__(
        self,
        home: str | Path,
        repo: str | Path,
        *,
        port: int | None = None,
        storage: str | Path | None = None,
        timezone: str | None = None,
        poll_s: float = 2.0,
        host: str = "127.0.0.1",
        auth_string: str | None = None,
    ):
        if host not in LOOPBACK and not auth_string:
            raise StackError(
                f"--host {host} exposes the API beyond this machine: give an auth string (--auth-string USER:PASSWORD "
                "or PREFECT_SERVER_API_AUTH_STRING); workers on other machines then set PREFECT_API_AUTH_STRING to it"
            )
        self.host, self.auth_string = host, auth_string
        self.home = Path(home).resolve()
        self.repo = Path(repo).resolve()
        self.port = port or free_port()
        self.storage = Path(storage).resolve() if storage else self.home / "results"
        self.timezone = timezone or local_timezone()
        self.poll_s = poll_s
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def origins(self) -> list[str]:
        """Browser origins allowed to call the API: the UI's own (and the name it is reached by beyond loopback)."""
        names = ["127.0.0.1", "localhost"]
        if self.host not in LOOPBACK:
            names += [socket.gethostname()] if self.host in ("0.0.0.0", "::") else [self.host]
        return [f"http://{n}:{self.port}" for n in names]

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for every process of this stack (and for clients that talk to it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_UI_URL": self.ui_url,
                "PREFECT_SERVER_API_HOST": self.host,
                "PREFECT_SERVER_API_PORT": str(self.port),
                # Only the UI's own pages may call the API from a browser (Prefect's default is any page, so any
                # web page open on this machine could start runs); state changes need Prefect's CSRF token.
                "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(self.origins),
                "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
                # schedule new deployments' runs within seconds, so the nightly run shows up right after deploying
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                "PREFECT_LOCAL_STORAGE_PATH": str(self.storage),
                "PREFECT_WORKER_QUERY_SECONDS": str(self.poll_s),
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
                "REALIGN_HOME": str(self.repo),
                "REALIGN_NIGHTLY_TZ": self.timezone,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string  # the server asks for it
            env["PREFECT_API_AUTH_STRING"] = self.auth_string  # and this stack's clients and workers give it
        env.update(extra)
        return env

    def _prefect(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "prefect", *args]
        done = subprocess.run(
            cmd, cwd=self.repo, env=env or self.env(), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise StackError(
                f"`prefect {' '.join(args)}` failed (exit {done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def _spawn(self, name: str, args: list[str], **extra_env: str) -> subprocess.Popen:
        log = self.home / "logs" / f"{name}.log"
        fh = open(log, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", *args],
            cwd=self.repo,
            env=self.env(**extra_env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fh.close()
        self.procs.append((name, proc, log))
        return proc

    def start_server(self, timeout: float = 180) -> None:
        """Start `prefect server start` on host:port and wait until /api/health answers."""
        taken = who_listens(self.port)
        if taken is not None:
            raise StackError(
                f"port {self.port} on 127.0.0.1 is taken by {taken}: stop it, or choose another port (--port N)"
            )
        proc = self._spawn("server", ["server", "start", "--host", self.host, "--port", str(self.port)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    f"Prefect server exited with {proc.returncode}; see {self.home / 'logs' / 'server.log'}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise StackError(f"Prefect server not healthy after {timeout:.0f}s; see {self.home / 'logs' / 'server.log'}")

    def create_pools(self, pools: tuple[str, ...] | list[str] = POOLS) -> None:
        """Create process work pools (an existing pool is left as it is)."""
        existing = self._prefect("work-pool", "ls").stdout
        for pool in pools:
            if f" {pool} " not in existing.replace("│", " "):
                self._prefect("work-pool", "create", pool, "--type", "process")

    def deploy(self, names: list[str] | None = None) -> str:
        """`prefect deploy` every deployment in prefect.yaml (or the named ones); returns its output."""
        args = ["--no-prompt", "deploy"] + ([a for n in names for a in ("--name", n)] if names else ["--all"])
        # Without REALIGN_HOME here, the pull step keeps its {{ $REALIGN_HOME }} placeholder, and each
        # worker fills in its own machine's checkout when a run starts.
        env = self.env()
        del env["REALIGN_HOME"]
        return self._prefect(*args, timeout=600, env=env).stdout

    def start_worker(self, pool: str, **extra_env: str) -> subprocess.Popen:
        """A process worker for `pool`; extra_env reaches the flow runs it starts (e.g. REALIGN_SHARD_SLOWDOWN)."""
        return self._spawn(f"worker-{pool}", ["worker", "start", "--pool", pool, "--type", "process"], **extra_env)

    def stop(self) -> None:
        """Stop everything this stack started, newest first (workers before the server)."""
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()

    def __enter__(self) -> "LocalPrefect":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
