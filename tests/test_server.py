"""`realign server`'s stack: loopback only unless an auth string guards it, its own Prefect home, CORS and CSRF,
a taken port refused, nothing left behind when the command is killed."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import REPO, run_cli
from realign.cli.server import LocalPrefect, StackError, free_port, local_timezone, who_listens
from realign.cli.watchdog import session_pids


def test_stack_environment_is_loopback_and_self_contained(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")  # must not leak into the stack
    s = LocalPrefect(tmp_path / "home", REPO, port=4555, timezone="Europe/Berlin")
    env = s.env()
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4555/api" and env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_HOME"] == str((tmp_path / "home").resolve())
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == str((tmp_path / "home" / "results").resolve())
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["REALIGN_HOME"] == str(REPO) and env["REALIGN_NIGHTLY_TZ"] == "Europe/Berlin"
    assert "/" in local_timezone() or local_timezone() == "UTC"


def test_server_rejects_an_unknown_timezone_and_pool():
    done = run_cli("server", "--timezone", "Mars/Olympus")
    assert done.returncode == 2 and "not an IANA zone name" in done.stderr
    done = run_cli("server", "--serve", "laptop")
    assert done.returncode == 2 and "pools are realign, m4-max, m3-ultra" in done.stderr


def test_the_api_takes_browser_calls_only_from_the_ui_and_needs_csrf(tmp_path):
    env = LocalPrefect(tmp_path, REPO, port=4556).env()
    assert env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == "http://127.0.0.1:4556,http://localhost:4556"
    assert env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env


def test_beyond_loopback_an_auth_string_is_required(tmp_path):
    with pytest.raises(StackError, match="exposes the API beyond this machine: give an auth string"):
        LocalPrefect(tmp_path, REPO, host="0.0.0.0")
    env = LocalPrefect(tmp_path, REPO, port=4557, host="0.0.0.0", auth_string="me:s3cret").env()
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == env["PREFECT_API_AUTH_STRING"] == "me:s3cret"
    assert env["PREFECT_SERVER_API_HOST"] == "0.0.0.0"
    assert f"http://{socket.gethostname()}:4557" in env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"].split(",")
    done = run_cli("server", "--host", "0.0.0.0", env={"PREFECT_SERVER_API_AUTH_STRING": ""})
    assert done.returncode == 2 and "give an auth string" in done.stderr


def test_a_taken_port_is_refused_with_what_answers_there(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} on 127.0.0.1 is taken by a program that does not speak"):
            LocalPrefect(tmp_path, REPO, port=port).start_server()
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StackError, match=r"taken by an HTTP server \(SimpleHTTP"):
            LocalPrefect(tmp_path, REPO, port=httpd.server_address[1]).start_server()
    finally:
        httpd.shutdown()
    assert not (tmp_path / "logs" / "server.log").exists()  # nothing was started


@pytest.mark.slow
def test_cors_and_csrf_on_a_real_server(tmp_path):
    with LocalPrefect(tmp_path / "home", REPO) as stack:
        stack.start_server()
        stack.create_pools(["realign"])  # Prefect's own client fetches CSRF tokens: the stack still works
        url = f"{stack.api_url}/flow_runs/filter"

        def preflight(origin):
            req = urllib.request.Request(
                url, method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.headers.get("Access-Control-Allow-Origin")
            except urllib.error.HTTPError as exc:
                return exc.headers.get("Access-Control-Allow-Origin")

        assert preflight(stack.ui_url) == stack.ui_url
        assert preflight("http://evil.example") is None  # another page may not call the API
        post = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(post, timeout=5)
        assert info.value.code == 403 and b"CSRF" in info.value.read()


def _wait(predicate, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_a_killed_server_command_leaves_nothing_behind(tmp_path):
    session, port = uuid.uuid4().hex, free_port()
    env = {**os.environ, "REALIGN_NEW_SESSION": session}
    cmd = [sys.executable, "-m", "realign.cli", "server", "--no-worker", "--port", str(port), "--home", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: who_listens(port) is not None, 120), "the server never came up"
        assert session_pids(session), "the server does not carry the session id"
    finally:
        proc.kill()  # SIGKILL: no handler, no finally, no atexit in the command
    # not reaped yet: the dead command is a zombie, which must not look alive to the watchdog
    assert _wait(lambda: not session_pids(session), 60), f"left behind: {session_pids(session)}"
    assert _wait(lambda: who_listens(port) is None, 30)
    proc.wait()


@pytest.mark.slow
def test_a_killed_run_leaves_no_temporary_server_behind(tmp_path):
    session = uuid.uuid4().hex
    env = {**os.environ, "REALIGN_NEW_SESSION": session}
    cmd = [sys.executable, "-m", "realign.cli", "run", "dpo", "--run-name", "killed", "--runs-root", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The run directory is made inside the flow: by then Prefect's temporary API server is up.
        assert _wait(lambda: (tmp_path / "killed").is_dir(), 180), "the run never started"
        assert len(session_pids(session)) >= 1
    finally:
        proc.kill()
        proc.wait()
    assert _wait(lambda: not session_pids(session), 60), f"left behind: {session_pids(session)}"
