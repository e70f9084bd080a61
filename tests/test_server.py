"""`realign server`'s stack: loopback only, its own Prefect home, clear errors."""

from __future__ import annotations

from conftest import REPO, run_cli
from realign.cli.server import LocalPrefect, local_timezone


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
