"""The OpenBLAS preload on Linux, and `realign doctor`."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from realign._blas import _find_openblas

linux_with_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _find_openblas() is None, reason="needs Linux with libopenblas0-pthread"
)

PROBE = (
    "import warnings, json\n"
    "with warnings.catch_warnings(record=True) as w:\n"
    "    warnings.simplefilter('always')\n"
    "    {first}\n"
    "    from realign._blas import blas_status\n"
    "    s = blas_status()\n"
    "import mlx.core as mx\n"
    "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(json.dumps({{'active': s.active, 'reason': s.reason, 'mapped': 'libopenblas' in maps,"
    " 'warnings': [str(x.message) for x in w]}}))\n"
)


def _probe(first: str, env: dict | None = None) -> dict:
    import os

    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@linux_with_openblas
def test_import_realign_preloads_openblas_into_the_process():
    s = _probe("import realign")
    assert s["active"] and s["mapped"] and s["warnings"] == []


@linux_with_openblas
def test_opt_out_leaves_mlx_on_its_bundled_blas():
    s = _probe("import realign", {"REALIGN_NO_FAST_BLAS": "1"})
    assert not s["active"] and not s["mapped"] and "REALIGN_NO_FAST_BLAS" in s["reason"]


@linux_with_openblas
def test_mlx_imported_first_is_reported_not_hidden():
    s = _probe("import mlx.core; import realign")
    assert not s["active"] and "imported before realign" in s["reason"]
    assert any("import realign first" in w for w in s["warnings"])


def test_missing_library_warns_once_with_install_command(monkeypatch):
    import realign._blas as b

    monkeypatch.setattr(b, "_status", None)
    monkeypatch.setattr(b, "_find_openblas", lambda: None)
    monkeypatch.setattr(b.sys, "platform", "linux")
    monkeypatch.delenv("REALIGN_NO_FAST_BLAS", raising=False)
    with pytest.warns(RuntimeWarning, match="apt-get install -y libopenblas0-pthread"):
        s = b.load_fast_blas()
    assert not s.active
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert b.load_fast_blas() is s  # second call: cached, no second warning


@linux_with_openblas
def test_doctor_reports_device_blas_and_a_measured_figure():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["fast_blas_active"] is True and "OpenBLAS preloaded" in r["fast_blas"]
    assert r["device"].startswith("Device(cpu")
    assert r["gflops"] == pytest.approx(2 * r["matmul_size"] ** 3 / r["matmul_seconds"] / 1e9)
    table = run_cli("doctor")
    assert "fast BLAS" in table.stdout and "GFLOPS" in table.stdout and "active: OpenBLAS" in table.stdout
    assert "BLAS threads" in table.stdout
    # the thread count in use is OpenBLAS's own answer; REALIGN_BLAS_THREADS sets it at the preload
    assert r["blas_threads"] >= 1
    one = json.loads(run_cli("doctor", "--json", env={"REALIGN_BLAS_THREADS": "1"}).stdout)
    assert one["blas_threads"] == 1 and one["environment"]["REALIGN_BLAS_THREADS"] == "1"
