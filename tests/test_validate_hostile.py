"""`realign validate` against hostile and careless input: exit codes, line numbers, nothing lost, nothing clobbered.

Row-level kinds sit on line 2 between two good rows: exit 1, `FILE:2:` reported, the reason in the rejects file,
and both good rows kept exactly once. File-level kinds exit 2 with one line naming the path, and write nothing.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import realign.data.formats as formats
from realign.cli.main import app
from realign.data.formats import FileProblem, validate_file

GOOD1 = b'{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}'
GOOD2 = b'{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"}'

# kind -> (line 2's bytes, a phrase its reason contains)
HOSTILE_ROWS = {
    "truncated_json": (b'{"prompt": "p", "chosen": "a", ', "invalid JSON"),
    "array": (b'["p", "a", "b"]', "JSON list, not an object"),
    "string": (b'"just text"', "JSON string, not an object"),
    "null": (b"null", "not an object"),
    "number": (b"42", "not an object"),
    "empty_object": (b"{}", "missing field"),
    "missing_rejected": (b'{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
    "empty_chosen": (b'{"prompt": "p", "chosen": "", "rejected": "b"}', "field 'chosen' is empty"),
    "blank_chosen": (b'{"prompt": "p", "chosen": "   ", "rejected": "b"}', "field 'chosen' is empty"),
    "identical": (b'{"prompt": "p", "chosen": "x", "rejected": "x"}', "identical"),
    "int_chosen": (b'{"prompt": "p", "chosen": 4, "rejected": "b"}', "wrong type"),
    "bool_chosen": (b'{"prompt": "p", "chosen": true, "rejected": "b"}', "wrong type"),
    "null_rejected": (b'{"prompt": "p", "chosen": "a", "rejected": null}', "rejected"),
    "object_prompt": (b'{"prompt": {"text": "p"}, "chosen": "a", "rejected": "b"}', "wrong type"),
    "invalid_utf8": (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "invalid UTF-8"),
    "lone_surrogate": (b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}', "lone UTF-16 surrogate \\ud800"),
    "surrogate_in_key": (b'{"prompt": "p", "chosen": "a", "rejected": "b", "\\udfff": 1}', "lone UTF-16 surrogate"),
    "nan_extra_field": (b'{"prompt": "p", "chosen": "a", "rejected": "b", "w": NaN}', "NaN is not a JSON value"),
    "infinity": (b'{"prompt": "p", "chosen": "a", "rejected": "b", "w": -Infinity}', "-Infinity is not a JSON value"),
    "deep_nesting": (
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "nested too deeply",
    ),
    "huge_integer": (b'{"prompt": "p", "chosen": "a", "rejected": "b", "n": ' + b"9" * 5000 + b"}", "invalid JSON"),
    "wrong_format_sft": (b'{"instruction": "q", "output": "a"}', "looks like sft, not dpo"),
    "wrong_format_grpo": (b'{"prompt": "p", "responses": [{"text": "a", "score": 1}]}', "looks like grpo"),
    "python_repr": (b"{'prompt': 'p', 'chosen': 'a', 'rejected': 'b'}", "invalid JSON"),
    "trailing_garbage": (b'{"prompt": "p", "chosen": "a", "rejected": "b"} x', "invalid JSON"),
    "two_objects": (b'{"prompt": "p", "chosen": "a", "rejected": "b"}{"prompt": "q"}', "invalid JSON"),
    "bom_mid_file": (b'\xef\xbb\xbf{"prompt": "p", "chosen": "a", "rejected": "b"}', "invalid JSON"),
    "nul_bytes": (b"\x00\x00\x00", "invalid JSON"),
    "binary_noise": (bytes(range(1, 10)) + b"\xff\xfe", "invalid UTF-8"),
    "unterminated_string": (b'{"prompt": "p, "chosen": "a", "rejected": "b"}', "invalid JSON"),
}


def run(*args: str):
    """The CLI in-process (same code path as the console script, without a new interpreter per case)."""
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("kind", sorted(HOSTILE_ROWS))
def test_a_hostile_row_is_rejected_alone_and_good_rows_kept_once(tmp_path, kind):
    line, reason = HOSTILE_ROWS[kind]
    data = tmp_path / "d.jsonl"
    data.write_bytes(GOOD1 + b"\n" + line + b"\n" + GOOD2 + b"\n")
    out, rej = tmp_path / "clean.jsonl", tmp_path / "rej.jsonl"
    result = run("validate", str(data), "--format", "dpo", "--out", str(out), "--rejects", str(rej))
    assert result.exit_code == 1, result.output
    assert f"{data}:2: " in result.output and "Traceback" not in result.output
    assert out.read_bytes() == GOOD1 + b"\n" + GOOD2 + b"\n"  # exactly the good rows, once, in order
    rejects = [json.loads(x) for x in rej.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2]
    assert any(reason in r for r in rejects[0]["reasons"]), rejects[0]["reasons"]
    assert "3 lines, 2 valid, 1 rejected" in result.output


def test_valid_oddities_are_kept(tmp_path):
    rows = [
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "n": 1e999}',  # a float JSON allows, out of range
        b'{"prompt": "\\u0000ctl", "chosen": "\xf0\x9f\x98\x80", "rejected": "b"}',  # escaped control char, emoji
        b'{"prompt": "' + b"x" * 1_000_000 + b'", "chosen": "a", "rejected": "b"}',  # a 1 MB line
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "prompt2": "dup", "chosen": "c"}',  # duplicate key
    ]
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "o.jsonl"
    result = run("validate", str(data), "--format", "dpo", "--out", str(out), "--rejects", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == data.read_bytes()


def test_cr_only_line_endings_are_lines(tmp_path):
    data = tmp_path / "mac.jsonl"
    data.write_bytes(GOOD1 + b"\r" + b'{"prompt": "p"}' + b"\r" + GOOD2 + b"\r")
    result = run("validate", str(data), "--format", "dpo")
    assert result.exit_code == 1 and f"{data}:2: missing field" in result.output
    assert "3 lines, 2 valid, 1 rejected" in result.output


def _file_level(tmp_path):
    """kind -> (args after `validate`, phrase of the one-line error). Built per test: they touch the disk."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(GOOD1 + b"\n" + GOOD2 + b"\n")
    (tmp_path / "gz.jsonl").write_bytes(gzip.compress(good.read_bytes()))
    pd.DataFrame({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}).to_parquet(tmp_path / "pq.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    (tmp_path / "fake.parquet").write_bytes(GOOD1 + b"\n")
    (tmp_path / "zip.jsonl").write_bytes(b"PK\x03\x04" + b"\x00" * 30)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    os.symlink(good, tmp_path / "link-to-input.jsonl")
    os.link(good, tmp_path / "hardlink.jsonl")
    os.symlink(tmp_path / "elsewhere.jsonl", tmp_path / "dangling.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "taken.jsonl").write_text("precious\n")
    (tmp_path / "taken.rejects.jsonl").write_text("precious\n")
    os.symlink(tmp_path / "loop", tmp_path / "loop")  # a link to itself
    os.mkfifo(tmp_path / "fifo")
    g, d = str(good), "--format=dpo"
    return {
        "missing": ([str(tmp_path / "nope.jsonl"), d], "no such file"),
        "directory": ([str(tmp_path / "adir"), d], "is a directory"),
        "empty": ([str(tmp_path / "empty.jsonl"), d], "is empty"),
        "gzip_as_jsonl": ([str(tmp_path / "gz.jsonl"), d], "gzip-compressed"),
        "parquet_as_jsonl": (
            [str(tmp_path / "pq.jsonl"), d],
            "is a Parquet file, not JSONL text: give it a .parquet name",
        ),
        "zip_as_jsonl": ([str(tmp_path / "zip.jsonl"), d], "zip archive"),
        "corrupt_parquet": ([str(tmp_path / "bad.parquet"), d], "not a readable Parquet file"),
        "jsonl_as_parquet": ([str(tmp_path / "fake.parquet"), d], "is not a Parquet file"),
        "out_is_input": ([g, d, "--out", g, "--rejects", str(tmp_path / "r1.jsonl")], "is the input file"),
        "out_is_input_via_dotdot": ([g, d, "--out", str(tmp_path / "sub" / ".." / "good.jsonl")], "is the input file"),
        "out_is_symlink_to_input": ([g, d, "--out", str(tmp_path / "link-to-input.jsonl")], "is a symlink"),
        "out_is_hard_link_to_input": ([g, d, "--out", str(tmp_path / "hardlink.jsonl")], "is the input file"),
        "rejects_is_input": ([g, d, "--rejects", g], "is the input file"),
        "out_equals_rejects": (
            [g, d, "--out", str(tmp_path / "o.jsonl"), "--rejects", str(tmp_path / "o.jsonl")],
            "are the same file",
        ),
        "out_equals_rejects_via_dotdot": (
            [g, d, "--out", str(tmp_path / "o.jsonl"), "--rejects", str(tmp_path / "sub" / ".." / "o.jsonl")],
            "are the same file",
        ),
        "out_is_dangling_symlink": ([g, d, "--out", str(tmp_path / "dangling.jsonl")], "is a symlink"),
        "out_is_directory": ([g, d, "--out", str(tmp_path / "adir")], "is a directory"),
        "out_is_device": ([g, d, "--out", "/dev/null"], "not a regular file"),
        "out_folder_is_a_file": ([g, d, "--out", str(tmp_path / "afile" / "o.jsonl")], "is a file, not a directory"),
        "default_rejects_exists": ([g, d, "--out", str(tmp_path / "taken.jsonl")], "pass --rejects PATH"),
        "unknown_format": ([g, "--format=xml"], "xml"),
        "out_is_dot": ([g, d, "--out", str(tmp_path / ".")], "is a directory"),
        "out_in_a_symlink_loop": ([g, d, "--out", str(tmp_path / "loop" / "o.jsonl")], "cannot be resolved"),
        "input_is_a_pipe": ([str(tmp_path / "fifo"), d], "is not a regular file"),
        "input_is_a_device": (["/dev/zero", d], "is not a regular file"),
    }


def test_file_level_failures_exit_2_with_one_line_and_write_nothing(tmp_path):
    cases = _file_level(tmp_path)
    assert len(HOSTILE_ROWS) >= 30 and len(cases) >= 20  # the corpus: 30 kinds of bad lines, 20 of bad files
    snapshot = lambda: {  # noqa: E731
        p: p.read_bytes() if p.is_file() and not p.is_symlink() else None
        for p in tmp_path.iterdir()
        if p.name != "fifo"
    }
    before = snapshot()
    for kind, (args, phrase) in cases.items():
        result = run("validate", *args)
        assert result.exit_code == 2, (kind, result.output)
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], (kind, result.output)
    assert snapshot() == before  # nothing created, nothing replaced
    assert os.path.islink(tmp_path / "link-to-input.jsonl") and os.path.exists("/dev/null")


def test_disk_full_is_one_line_and_leaves_no_partial_output(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_bytes(GOOD1 + b"\n" + GOOD2 + b"\n")

    def full(self, raw):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(formats.RowWriter, "write_raw", full)
    out = tmp_path / "o.jsonl"
    result = run("validate", str(data), "--format", "dpo", "--out", str(out), "--rejects", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and "No space left on device; nothing was written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_rejects_that_cannot_be_saved_keep_the_clean_rows_from_being_published(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_bytes(GOOD1 + b"\n" + b"{oops\n" + GOOD2 + b"\n")
    out, rej = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    real_replace = os.replace

    def full_at_rejects(src, dst):
        if Path(dst) == rej:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_at_rejects)
    result = run("validate", str(data), "--format", "dpo", "--out", str(out), "--rejects", str(rej))
    assert result.exit_code == 2, result.output
    assert f"writing {rej} and {out}: No space left on device; nothing was written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # no clean file without its rejects


def test_markup_in_paths_is_printed_as_text(tmp_path):
    (tmp_path / "[").mkdir()  # so the path holds the markup-like text "[/oops]"
    data = tmp_path / "[/oops] [bold].jsonl"
    data.write_bytes(GOOD1 + b"\n" + b'{"prompt": "[load_safetensors]"}' + b"\n")
    result = run("validate", str(data), "--format", "dpo")
    assert result.exit_code == 1 and f"{data}:2:" in result.output and "[/oops] [bold].jsonl" in result.output
    missing = run("validate", str(tmp_path / "[/x].jsonl"), "--format", "dpo")
    assert missing.exit_code == 2 and "[/x].jsonl: no such file" in missing.output


# Lines a hypothesis draws: noise, valid rows, and valid rows with a few bytes changed.
_valid = st.sampled_from([GOOD1, GOOD2, b'{"prompt": "x", "chosen": "y", "rejected": "z", "k": [1, {"a": null}]}'])
_mutated = st.tuples(_valid, st.lists(st.tuples(st.integers(0, 80), st.binary(max_size=3)), max_size=4)).map(
    lambda t: _mutate(*t)
)
_line = st.one_of(_valid, _mutated, st.binary(max_size=60)).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


def _mutate(line: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for pos, new in edits:
        pos = min(pos, len(line))
        line = line[:pos] + new + line[pos + 1 :]
    return line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=12))
def test_any_lines_are_each_accounted_for_exactly_once(tmp_path, lines):
    data, out, rej = tmp_path / "h.jsonl", tmp_path / "h.out.jsonl", tmp_path / "h.rej.jsonl"
    for p in (out, rej):
        p.unlink(missing_ok=True)
    data.write_bytes(b"\n".join(lines) + b"\n")
    if not data.read_bytes().strip(b"\n"):
        return  # nothing but newlines: not a dataset (covered by the empty-file case)
    try:
        report = validate_file(data, "dpo", out=out, rejects=rej)
    except FileProblem as exc:  # random bytes can be a gzip/zip/xz/zstd header: a whole-file verdict, nothing written
        assert "not JSONL text" in str(exc) and not out.exists() and not rej.exists()
        return
    assert report.lines == len(lines)
    assert report.valid + report.rejected + report.blank == report.lines
    kept = out.read_bytes().splitlines()
    rejected = [json.loads(x)["line"] for x in rej.read_text().splitlines()]
    assert len(kept) == report.valid and len(rejected) == report.rejected == len(set(rejected))
    # a BOM on line 1 is dropped (editors write one); a line of spaces is blank
    good = [x.removeprefix(b"\xef\xbb\xbf") if i == 1 else x for i, x in enumerate(lines, start=1)]
    blank = {i for i, x in enumerate(good, start=1) if not x.strip()}
    assert len(blank) == report.blank and not blank & set(rejected) and all(1 <= n <= len(lines) for n in rejected)
    # the kept rows are the other lines, byte for byte and in order
    assert kept == [x for i, x in enumerate(good, start=1) if i not in blank and i not in set(rejected)]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=10),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=10, max_size=10),
    chunk=st.integers(1, 9),
    last_ended=st.booleans(),
)
def test_line_endings_split_the_same_at_any_chunk_size(lines, endings, chunk, last_ended):
    # LF, CRLF and lone CR, mixed, with chunk boundaries anywhere (a CRLF cut in two included)
    parts = [line + end for line, end in zip(lines, endings)]
    if parts and not last_ended:
        parts[-1] = lines[-1]
    data = b"".join(parts)
    got = list(formats._lines(io.BytesIO(data), chunk=chunk))
    # the whole file at once, by a plain regex: a CR then an LF is one CRLF ending wherever the chunks were cut
    assert got == re.findall(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", data)
    assert b"".join(got) == data
    if not any(a.endswith(b"\r") and b == b"\n" for a, b in zip(parts, parts[1:])):  # no CR + empty-LF ambiguity
        assert got == [p for p in parts if p]
