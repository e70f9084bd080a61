"""The temporary Prefect API server `realign run` starts before its imports: it answers, it is stopped, and a server
that cannot start says why."""

from __future__ import annotations

import urllib.request

import pytest

from realign.cli.temporary_server import TemporaryServer, TemporaryServerError


def test_the_temporary_server_answers_and_is_gone_after_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # a fresh database: created and migrated by the server
    server = TemporaryServer(timeout_s=300).start()
    try:
        url = server.wait()
        assert url == f"http://127.0.0.1:{server.port}/api" and server.ready_after_s > 0
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            assert r.status == 200
        proc = server.proc
    finally:
        server.stop()
    assert proc.poll() is not None and server.proc is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


def test_a_server_that_cannot_start_reports_its_exit_and_log(tmp_path, monkeypatch):
    # a database URL no driver serves: the server exits during start-up
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "nosuchdb://x")
    server = TemporaryServer(timeout_s=120).start()
    with pytest.raises(TemporaryServerError, match="exited with status") as info:
        server.wait()
    server.stop()
    assert "its log ends" in str(info.value)


def test_the_warm_up_asks_once_for_an_unserved_path_after_health_answers():
    # A stand-in server that records what it was asked: health first (until it answers), then one unserved path,
    # which makes FastAPI build every route before the run's first call.
    import http.server
    import threading
    import time

    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            ok = self.path == "/api/health" and asked.count("/api/health") >= 2  # the first health call fails
            self.send_response(200 if ok else 404 if self.path != "/api/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    class Running:
        def poll(self):
            return None

    server = TemporaryServer(timeout_s=30)
    server.started_at = time.perf_counter()
    try:
        server._warm_up(Running(), f"http://127.0.0.1:{httpd.server_address[1]}/api")
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.stop()
    assert asked == ["/api/health", "/api/health", "/api/realign-warm-up"]


def test_a_port_taken_before_the_server_binds_it_is_replaced_by_another(tmp_path, monkeypatch):
    # The port is chosen free, then taken by someone else before the server binds it: the server exits (uvicorn's
    # startup failure, "address already in use") and is started again on another port.
    import socket

    import realign.cli.temporary_server as ts
    from realign.cli.server import free_port

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = iter([taken.getsockname()[1]])
    monkeypatch.setattr(ts, "free_port", lambda: next(first, None) or free_port())
    server = TemporaryServer(timeout_s=300).start()
    try:
        url = server.wait()
        assert server.port != taken.getsockname()[1] and url.endswith(f":{server.port}/api")
    finally:
        server.stop()
        taken.close()
