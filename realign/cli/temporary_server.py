"""Prefect's temporary API server for one `realign run` / `realign demo`, started before the heavy imports.

Without PREFECT_API_URL, Prefect starts a temporary API server when the flow makes its first call, after the
flow modules (Prefect, Great Expectations, MLX) are imported, and it imports Prefect's whole server package into
the command's own process to do so (about 5 s on 2 cores) only to launch a subprocess. realign launches the same
server (uvicorn, `prefect.server.api.server:create_app`, the UI off, Prefect's own "ephemeral" server flags) as its
first act, so the server boots on one core while the command imports on the other, and points the run at it.
Once it answers, one request to a path it does not serve makes it build every API route, which FastAPI (0.150)
otherwise builds on the first request that passes them (about 0.4 s of the run's first call).
The server is stopped when the run ends; the command's watchdog stops it if the command is killed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from realign.cli.server import free_port

# What Prefect's own temporary server runs with (prefect.server.api.server.SubprocessASGIServer): no UI, the
# server's "ephemeral" mode (fewer background services).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# `uvicorn --factory prefect.server.api.server:create_app` on 127.0.0.1:PORT, with the collector off while Prefect's
# server package is imported and its app built: collecting while those ~500k lasting objects are made took ~0.9 s of
# a ~4.5 s start; frozen afterwards, no later pass rescans them.
SERVER_MAIN = """
import gc, sys
gc.disable()
from prefect.server.api.server import create_app
app = create_app()
gc.freeze()
gc.enable()
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", lifespan="on")
"""
STARTUP_FAILURE = 3  # uvicorn's exit status when it did not start: another port is tried if the port was taken


class TemporaryServerError(RuntimeError):
    """The temporary server did not answer; the message holds its exit status and the end of its log."""


class TemporaryServer:
    """One temporary Prefect API server on 127.0.0.1; `start()` returns at once, `wait()` until it answers."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log = tempfile.NamedTemporaryFile(prefix="realign-prefect-server-", suffix=".log", delete=False)
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "TemporaryServer":
        # Found without importing Prefect (that import is what this process avoids).
        if importlib.util.find_spec("prefect") is None:
            raise TemporaryServerError("Prefect is not installed in this environment: run `make install`")
        self.port = free_port()
        self.started_at = self.started_at or time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", SERVER_MAIN, str(self.port)],  # -P: not the current directory's modules
            env={**os.environ, **SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        # Warmed from a thread, so the server builds its routes on its own core while this process still imports.
        threading.Thread(target=self._warm_up, args=(self.proc, self.api_url), daemon=True).start()
        return self

    def _warm_up(self, proc: subprocess.Popen, api_url: str) -> None:
        """Once `proc` answers: one request for a path no route serves, which walks (and so builds) every route."""
        deadline = self.started_at + self.timeout_s
        while time.perf_counter() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                    pass
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
                continue
            try:
                urllib.request.urlopen(f"{api_url}/realign-warm-up", timeout=30).close()
            except Exception:  # noqa: BLE001 (best effort: the expected 404, or a failure wait() or the run reports)
                pass
            return

    def wait(self) -> str:
        """Block until the server's /api/health answers; returns the API URL. Raises TemporaryServerError."""
        assert self.proc is not None, "start() first"
        deadline = self.started_at + self.timeout_s
        while time.perf_counter() < deadline:
            code = self.proc.poll()
            if code == STARTUP_FAILURE and "address already in use" in self._tail(1 << 20).lower():
                self.start()  # the port was taken between choosing it and binding it
                continue
            if code is not None:
                raise TemporaryServerError(f"Prefect's temporary API server exited with status {code}: {self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready_after_s = time.perf_counter() - self.started_at
                        return self.api_url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TemporaryServerError(
            f"Prefect's temporary API server did not answer within {self.timeout_s:.0f} s "
            f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS raises the limit): {self._tail()}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def _tail(self, n: int = 2000) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")[-n:].strip()
        return f"its log ends: {text}" if text else "it logged nothing"
