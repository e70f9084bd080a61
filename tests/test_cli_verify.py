"""`realign verify`: grades an RLVR file of code responses in order, counts false positives/negatives against the
input's labels, leaves nothing behind; GRPO rows; bad input is a clear error."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from conftest import run_cli
from realign.data.code_tasks import code_rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sandbox_processes(tmp_root) -> list[str]:
    """Processes still running a harness from a sandbox under `tmp_root` (this test's own, not another run's)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"{tmp_root}/realign-sandbox-" in line and not line.startswith("ps ")]


def _sandbox_dirs(tmp_root) -> list:
    return sorted(p.name for p in tmp_root.glob("realign-sandbox-*"))


def test_verify_grades_twenty_code_responses_in_order_within_a_minute_and_leaves_nothing(tmp_path):
    outside, secret = tmp_path / "pwned", tmp_path / "secret"
    secret.write_text("TOP-SECRET-5521")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    rows = code_rows(str(outside), server.getsockname()[1], str(secret))
    # 20 responses: task 0's first 18 after its plain right and wrong ones (faking, harmful, side effects), and
    # task 1's right and wrong answers
    kept = [{**rows[0], "responses": rows[0]["responses"][2:20]}, rows[1]]
    assert sum(len(r["responses"]) for r in kept) == 20
    truth = [[r["correct"] for r in row["responses"]] for row in kept]
    right = next(i for i, r in enumerate(kept[0]["responses"]) if r["correct"])
    kept[0]["responses"][right] = {**kept[0]["responses"][right], "correct": False}  # right, labelled wrong: an FP
    kept[1]["responses"] = [kept[1]["responses"][0], {**kept[1]["responses"][1], "correct": True}]  # an FN vs label
    src = _write(tmp_path / "code.jsonl", kept)
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()

    t0 = time.perf_counter()
    proc = run_cli("verify", str(src), "--verifier", "python", "--out", str(tmp_path / "graded.jsonl"),
                   env={"TMPDIR": str(tmp_root)})  # fmt: skip
    took = time.perf_counter() - t0
    server_accepted = True
    try:
        server.accept()
    except socket.timeout:
        server_accepted = False
    server.close()

    assert proc.returncode == 0, proc.stderr
    assert took < 60, f"took {took:.1f} s"
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [r["problem"] for r in graded] == [r["problem"] for r in kept]  # input order
    for g, labels in zip(graded, truth, strict=True):
        for got, right in zip(g["responses"], labels, strict=True):
            assert got["correct"] is right, (got["text"][:60], got["verifier"])
            assert got["verifier"]["status"] in ("passed", "failed", "timeout", "memory", "error")
            assert got["verifier"]["seconds"] >= 0
    assert "false positives 1 of" in proc.stdout and "false negatives 1 of" in proc.stdout
    assert "20 code responses ran in a sandbox" in proc.stdout
    # nothing left behind: no process, no file outside, no connection, no sandbox directory
    assert _sandbox_processes(tmp_root) == []
    assert not outside.exists() and not server_accepted
    assert _sandbox_dirs(tmp_root) == []


def test_verify_grpo_rows_with_a_reference_and_keeps_rows_without_one(tmp_path):
    rows = [
        {
            "prompt": "2+2?",
            "answer": "4",
            "responses": [{"text": "It is 4", "score": 0.0}, {"text": "5", "score": 1.0}],
        },
        {"prompt": "open-ended", "responses": [{"text": "hmm", "score": 0.3}]},
    ]
    src = _write(tmp_path / "g.jsonl", rows)
    proc = run_cli("verify", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    graded = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["score"] for r in graded[0]["responses"]] == [1.0, 0.0]
    assert graded[0]["answer"] == "4"  # other keys kept
    assert graded[1]["responses"][0]["score"] == 0.3  # not graded: kept as it was, with the reason
    assert graded[1]["responses"][0]["verifier"]["status"] == "error"
    assert f"{src}:2: not graded: no reference" in proc.stderr
    assert "false positives 1 of 1" in proc.stdout and "false negatives 1 of 1" in proc.stdout


def test_verify_refuses_bad_input_clearly(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "solution": "1", "responses": [{"text": "1", "correct": "yes"}]}\n')
    proc = run_cli("verify", str(bad), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and f"{bad}:1:" in proc.stderr and "realign validate" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
    good = _write(
        tmp_path / "g.jsonl", [{"problem": "p", "solution": "x", "responses": [{"text": "x", "correct": True}]}]
    )
    proc = run_cli("verify", str(good), "--out", str(good))
    assert proc.returncode == 2 and "input file" in proc.stderr
    proc = run_cli("verify", str(good), "--out", str(tmp_path / "o.parquet"))
    assert proc.returncode == 2 and ".jsonl" in proc.stderr
    proc = run_cli("verify", str(good), "--verifier", "fuzzy", "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "expected one of" in proc.stderr
    proc = run_cli("verify", str(good), "--verifier", "numeric", "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "g.jsonl:1:" in proc.stderr and "holds no number" in proc.stderr


def test_without_an_operating_system_sandbox_verify_refuses_code_before_writing(tmp_path, monkeypatch):
    from realign.score import sandbox
    from realign.score.grading import grade_file

    monkeypatch.setattr(sandbox, "isolation", lambda: "rlimits")
    monkeypatch.setattr("realign.score.grading.isolation", lambda: "rlimits")
    rows = [{"problem": "p", "solution": "def f():\n    return 1\n", "tests": ["assert f() == 1"],
             "responses": [{"text": "def f():\n    return 1\n", "correct": True}]}]  # fmt: skip
    src = _write(tmp_path / "c.jsonl", rows)
    with pytest.raises(ValueError, match="bubblewrap"):
        grade_file(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    allowed = sandbox.SandboxLimits(allow_weak_isolation=True)
    report = grade_file(src, tmp_path / "out.jsonl", limits=allowed)
    assert report.true_positive == 1 and report.code_responses == 1
