"""`realign validate` end to end, as a user runs it."""

import json

from conftest import run_cli

GOOD = [
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "source": "demo"},
    {"prompt": "Say hi", "chosen": "hi ✓", "rejected": "no"},
]
# (line text or bytes, expected message after FILE:LINE:)
BAD = [
    (
        '{"prompt": "p", "chosen": "a", ',
        "invalid JSON: Expecting property name enclosed in double quotes at column 32 "
        "(expected one JSON object per line)",
    ),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "invalid UTF-8 at byte 16 (expected UTF-8 text)"),
    ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected' (expected a non-empty string)"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "field 'prompt' is empty (expected non-empty text)"),
    (
        '{"prompt": "p", "chosen": 3, "rejected": "b"}',
        "field 'chosen' has the wrong type: number (expected a non-empty string)",
    ),
    (
        '{"prompt": "p", "chosen": ["a"], "rejected": "b"}',
        "field 'chosen' is a message list but not one assistant message (expected a list holding one message with "
        "role 'assistant', or a string)",
    ),
    (
        '{"prompt": "p", "chosen": "same", "rejected": "same"}',
        "chosen is identical to rejected (expected two different responses)",
    ),
    (
        '{"instruction": "Explain DPO", "output": "It optimises preferences."}',
        "looks like sft, not dpo (expected fields prompt, chosen, rejected)",
    ),
    ('"just a string"', "line is a JSON string, not an object (expected one JSON object per line)"),
    (
        '{"prompt": "p", "responses": [{"text": "a", "score": 2}]}',
        "looks like grpo, not dpo (expected fields prompt, chosen, rejected)",
    ),
]


def _write_mixed(path):
    """Good and bad lines interleaved, with blank lines; returns {line number: expected message}, good raw lines."""
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    good_raw: list[bytes] = []
    for i, (bad, msg) in enumerate(BAD):
        g = json.dumps(GOOD[i % len(GOOD)], ensure_ascii=False).encode()
        lines.append(g)
        good_raw.append(g)
        if i % 3 == 0:
            lines.append(b"")  # blank: skipped, not an error
        lines.append(bad if isinstance(bad, bytes) else bad.encode())
        expected[len(lines)] = msg
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected, good_raw


def test_mixed_file_reports_every_bad_line_and_splits_rows(tmp_path):
    data = tmp_path / "pairs.jsonl"
    expected, good_raw = _write_mixed(data)
    out, rej = tmp_path / "clean.jsonl", tmp_path / "rejects.jsonl"
    proc = run_cli("validate", str(data), "--format", "dpo", "--out", str(out), "--rejects", str(rej))
    assert proc.returncode == 1, proc.stderr
    reported = [x for x in proc.stdout.splitlines() if x.startswith(f"{data}:") and not x.startswith(f"{data}: ")]
    assert reported == [f"{data}:{n}: {msg}" for n, msg in expected.items()]
    # exactly the good rows, byte for byte, in order
    assert out.read_bytes() == b"".join(g + b"\n" for g in good_raw)
    rejects = [json.loads(x) for x in rej.read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(expected)
    assert [r["reasons"] for r in rejects] == [[m] for m in expected.values()]
    assert {r["kind"] for r in rejects} >= {
        "json",
        "utf8",
        "missing",
        "empty",
        "wrong_type",
        "identical",
        "wrong_format",
        "not_object",
    }
    undecodable = next(r for r in rejects if r["kind"] == "utf8")
    assert "raw_base64" in undecodable and "raw" not in undecodable
    summary = proc.stdout.strip().splitlines()[-1]
    blank = sum(1 for i in range(len(BAD)) if i % 3 == 0)
    assert summary.startswith(
        f"{data}: {len(BAD) * 2 + blank} lines, {len(good_raw)} valid, {len(BAD)} rejected, {blank} blank"
    )


def test_clean_file_exits_zero(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "\n".join(json.dumps(r) for r in [{"instruction": "a", "output": "b"}, {"instruction": "c", "response": "d"}])
        + "\n\n"
    )
    proc = run_cli("validate", str(data), "--format", "sft")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{data}: 3 lines, 2 valid, 0 rejected, 1 blank"


def test_out_without_rejects_keeps_bad_rows_beside_it(tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text('{"prompt": "p", "responses": [{"text": "a", "score": 0.5}]}\n{"prompt": "p", "responses": []}\n')
    proc = run_cli("validate", str(data), "--format", "grpo", "--out", str(tmp_path / "clean.jsonl"))
    assert proc.returncode == 1
    rej = tmp_path / "clean.rejects.jsonl"
    assert json.loads(rej.read_text())["line"] == 2
    assert f"rejects -> {rej}" in proc.stdout


def test_usage_errors_are_clear(tmp_path):
    proc = run_cli("validate", str(tmp_path / "missing.jsonl"), "--format", "dpo")
    assert proc.returncode == 2 and "missing.jsonl: no such file" in proc.stderr
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    proc = run_cli("validate", str(f), "--format", "kto")
    assert proc.returncode == 2 and "unknown format 'kto'" in proc.stderr
    proc = run_cli("validate", str(f), "--format", "dpo", "--out", str(f))
    assert proc.returncode == 2 and "is the input file" in proc.stderr and "refusing to overwrite it" in proc.stderr
