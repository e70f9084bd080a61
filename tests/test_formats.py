"""Row models, readers/writers and the streaming validator."""

import json

import pyarrow.parquet as pq
import pytest

from realign.data.formats import (
    DataFormatError,
    DPORow,
    FileProblem,
    GRPORow,
    RLVRRow,
    SFTRow,
    canonical_format,
    check_line,
    check_object,
    guess_format,
    read_rows,
    validate_file,
    write_rows,
)


def problems(line: str | bytes, fmt: str) -> list[str]:
    raw = line if isinstance(line, bytes) else line.encode()
    res = check_line(raw, 7, fmt)
    return res.problems


def test_sft_variants_normalise_to_prompt_and_completion():
    a = SFTRow.model_validate({"instruction": "Say hi", "output": "hi"})
    b = SFTRow.model_validate({"instruction": "Say hi", "response": "hi"})
    c = SFTRow.model_validate(
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}
    )
    assert (a.prompt, a.completion) == (b.prompt, b.completion) == ("Say hi", "hi")
    assert c.prompt == [{"role": "user", "content": "Say hi"}] and c.completion == "hi"
    assert b.to_record() == {"instruction": "Say hi", "output": "hi"}


@pytest.mark.parametrize(
    "line,fmt,expected",
    [
        (
            '{"prompt": "p", "chosen": "a"',
            "dpo",
            "invalid JSON: Expecting ',' delimiter at column 30 (expected one JSON object per line)",
        ),
        (
            b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}',
            "dpo",
            "invalid UTF-8 at byte 14 (expected UTF-8 text)",
        ),
        ('{"prompt": "p", "chosen": "a"}', "dpo", "missing field 'rejected' (expected a non-empty string)"),
        ('{"prompt": " ", "chosen": "a", "rejected": "b"}', "dpo", "field 'prompt' is empty (expected non-empty text)"),
        (
            '{"prompt": 3, "chosen": "a", "rejected": "b"}',
            "dpo",
            "field 'prompt' has the wrong type: number (expected a non-empty string)",
        ),
        (
            '{"prompt": "p", "chosen": "same", "rejected": "same"}',
            "dpo",
            "chosen is identical to rejected (expected two different responses)",
        ),
        (
            '{"prompt": "p", "responses": [{"text": "t", "score": 1.5}]}',
            "grpo",
            "field 'responses[0].score' is 1.5, outside the allowed range (expected a number in [0, 1])",
        ),
        (
            '{"prompt": "p", "responses": [{"text": "t", "score": "0.5"}]}',
            "grpo",
            "field 'responses[0].score' has the wrong type: string (expected a number in [0, 1])",
        ),
        (
            '{"prompt": "p", "responses": []}',
            "grpo",
            "field 'responses' is empty (expected a non-empty list of response objects)",
        ),
        (
            '{"problem": "p", "solution": "s", "responses": [{"text": "t", "correct": 1}]}',
            "rlvr",
            "field 'responses[0].correct' has the wrong type: number (expected true or false)",
        ),
        (
            '{"instruction": "i", "output": "o"}',
            "dpo",
            "looks like sft, not dpo (expected fields prompt, chosen, rejected)",
        ),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b"}',
            "sft",
            "looks like dpo, not sft (expected fields instruction + output (or response), or messages)",
        ),
        ("[1, 2]", "dpo", "line is a JSON list, not an object (expected one JSON object per line)"),
        (
            '{"instruction": "i"}',
            "sft",
            "missing field 'output' (expected instruction + output (or response), or messages)",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "sft",
            "messages has no assistant turn (expected at least one message with role 'assistant')",
        ),
    ],
)
def test_each_bad_line_gets_one_precise_reason(line, fmt, expected):
    assert problems(line, fmt) == [expected]


def test_good_lines_blank_lines_and_bom():
    assert check_line(b"   \n", 3, "dpo") is None
    assert check_line(b'\xef\xbb\xbf{"prompt": "p", "chosen": "a", "rejected": "b"}\n', 1, "dpo").ok
    assert check_line(b'{"prompt": "p", "responses": [{"text": "t", "score": 1}], "id": 9}', 2, "grpo").ok
    assert check_line(
        b'{"problem": "p", "solution": "s", "responses": [{"text": "t", "correct": false}]}', 2, "rlvr"
    ).ok


def test_guess_format_and_aliases():
    assert guess_format({"instruction": "x", "output": "y"}) == "sft"
    assert guess_format({"prompt": "x", "responses": [{"text": "a", "correct": True}]}) == "rlvr"
    assert guess_format({"prompt": "x", "responses": []}) == "grpo"
    assert guess_format({"foo": 1}) is None
    assert canonical_format("ORPO") == canonical_format("cpo") == "dpo"
    with pytest.raises(ValueError, match="unknown format 'kto'"):
        canonical_format("kto")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize(
    "fmt,rows",
    [
        (
            "sft",
            [
                {"instruction": "a", "output": "b"},
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
            ],
        ),
        ("dpo", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p2", "chosen": "é ✓", "rejected": "r2"}]),
        ("grpo", [{"prompt": "p", "responses": [{"text": "a", "score": 1.0}, {"text": "b", "score": 0.0}]}]),
        ("rlvr", [{"problem": "p", "solution": "s", "responses": [{"text": "a", "correct": True}]}]),
    ],
)
def test_write_then_read_round_trips(tmp_path, fmt, rows, suffix):
    path = tmp_path / f"data{suffix}"
    assert write_rows(path, rows, fmt) == len(rows)
    back = [r.to_record() for r in read_rows(path, fmt)]
    assert back == rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_read_rows_stops_at_first_bad_row_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(DataFormatError) as info:
        list(read_rows(path, "dpo"))
    assert str(info.value) == f"{path}:3: missing field 'rejected' (expected a non-empty string)"


def test_write_rows_validates_dicts(tmp_path):
    with pytest.raises(DataFormatError, match="chosen is identical"):
        write_rows(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}], "dpo")
    assert not (tmp_path / "x.jsonl").exists()  # atomic: nothing half-written


def test_validate_parquet_input_reports_row_numbers(tmp_path):
    import pyarrow as pa

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["p", "p", None], "chosen": ["a", "b", "c"], "rejected": ["x", "b", "y"]}), path)
    seen = []
    report = validate_file(
        path, "dpo", out=tmp_path / "clean.parquet", rejects=tmp_path / "rej.jsonl", on_problem=seen.append
    )
    assert (report.valid, report.rejected) == (1, 2)
    assert seen == [
        f"{path}:2: chosen is identical to rejected (expected two different responses)",
        f"{path}:3: missing field 'prompt', and chosen and rejected do not both start with one (expected a 'prompt' "
        "field, or TRL's implicit prompt: chosen and rejected that start with the same prompt)",
    ]
    assert pq.read_table(tmp_path / "clean.parquet").to_pylist() == [{"prompt": "p", "chosen": "a", "rejected": "x"}]
    rej = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rej] == [2, 3] and rej[1]["row"] == {"chosen": "c", "rejected": "y"}


def test_failed_validation_leaves_no_partial_outputs(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 5)
    import realign.data.formats as f

    calls = {"n": 0}
    real = f.check_line

    def flaky(raw, line, fmt):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk went away")
        return real(raw, line, fmt)

    monkeypatch.setattr(f, "check_line", flaky)
    with pytest.raises(OSError):
        validate_file(path, "dpo", out=tmp_path / "out.jsonl", rejects=tmp_path / "rej.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_row_models_are_strict_about_types():
    with pytest.raises(Exception):
        GRPORow.model_validate({"prompt": "p", "responses": [{"text": "t", "score": True}]})
    assert DPORow.model_validate({"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"x": 1}}).chosen == "a"
    assert (
        RLVRRow.model_validate({"problem": "p", "solution": "s", "responses": [{"text": "t", "correct": True}]})
        .responses[0]
        .correct
    )


def test_atomic_dir_replaces_whole_or_leaves_the_old(tmp_path):
    from realign.io import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1"  # the old one survives a failed rewrite
    with atomic_dir(target) as d:
        (d / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary siblings left


def test_rlvr_rows_may_carry_tests_for_code_tasks():
    from realign.data.formats import check_object

    row = {"problem": "p", "solution": "def f(): return 1", "responses": [{"text": "x", "correct": False}]}
    parsed, problems, _ = check_object({**row, "tests": ["assert f() == 1"]}, "rlvr")
    assert problems == [] and parsed.to_record()["tests"] == ["assert f() == 1"]
    assert "tests" not in check_object(row, "rlvr")[0].to_record()
    _, problems, _ = check_object({**row, "tests": "assert f() == 1"}, "rlvr")
    assert problems and "tests" in problems[0] and "list" in problems[0]
    _, problems, _ = check_object({**row, "tests": []}, "rlvr")
    assert problems and "tests" in problems[0]


# TRL's preference formats (docs/source/dataset_formats.md): standard, conversational, and implicit prompt in both.
USER, SYSTEM = {"role": "user", "content": "What color is the sky?"}, {"role": "system", "content": "Be brief."}


def _says(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "obj, record",
    [
        ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, ("The sky is", " blue.", " green.")),
        # TRL's extract_prompt keeps the space that starts both answers on the answers
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, ("The sky is", " blue.", " green.")),
        (
            {"prompt": [USER], "chosen": _says("It is blue."), "rejected": _says("It is green.")},
            ("What color is the sky?", "It is blue.", "It is green."),
        ),
        (
            {"chosen": [USER, *_says("It is blue.")], "rejected": [USER, *_says("It is green.")]},
            ("What color is the sky?", "It is blue.", "It is green."),
        ),
        (
            {"prompt": [SYSTEM, USER], "chosen": _says("Blue."), "rejected": _says("Green.")},
            ([SYSTEM, USER], "Blue.", "Green."),
        ),
    ],
)
def test_trl_preference_formats_become_prompt_and_two_answers(obj, record):
    row, problems, _ = check_object(obj, "dpo")
    assert problems == []
    assert row.to_record() == dict(zip(("prompt", "chosen", "rejected"), record))


def test_trl_conversational_file_validates_and_reads(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": [USER], "chosen": _says("It is blue."), "rejected": _says("It is green.")},
        {"prompt": [USER], "chosen": [{"role": "user", "content": "x"}], "rejected": _says("no")},
        {"prompt": [USER, *_says("Blue.")], "chosen": _says("a"), "rejected": _says("b")},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    report = validate_file(
        path, "dpo", out=tmp_path / "ok.jsonl", rejects=tmp_path / "bad.jsonl", on_problem=seen.append
    )
    assert (report.valid, report.rejected) == (1, 2)
    assert seen == [
        f"{path}:2: field 'chosen' is a message list but not one assistant message (expected a list holding one "
        "message with role 'assistant', or a string)",
        f"{path}:3: prompt ends with an assistant message (expected the conversation up to the answer, e.g. ending "
        "with the user's turn)",
    ]
    [good] = list(read_rows(tmp_path / "ok.jsonl", "dpo"))
    assert (good.prompt, good.chosen, good.prompt_text) == ("What color is the sky?", "It is blue.", USER["content"])


@pytest.mark.parametrize(
    "obj, fmt, message",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "sft",
            "field 'messages[0].content' has the wrong type: list (expected a non-empty string)",
        ),
        (
            {"prompt": "q", "responses": [{"text": ["a"], "score": 0.5}]},
            "grpo",
            "field 'responses[0].text' has the wrong type: list",
        ),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "dpo", "missing field 'prompt[0].content'"),
    ],
)
def test_a_list_where_text_belongs_is_rejected_in_every_format(obj, fmt, message):
    """The DPO prompt's text-or-messages union reports one branch; other text fields still report a list."""
    row, problems, kind = check_object(obj, fmt)
    assert row is None and problems and problems[0].startswith(message) and kind in ("wrong_type", "missing")


def test_a_multi_message_prompt_cannot_go_to_parquet_and_nothing_is_written(tmp_path):
    rows = [
        {
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "chosen": "a",
            "rejected": "b",
        }
    ]
    with pytest.raises(FileProblem, match="multi-message prompt .* write JSONL instead"):
        write_rows(tmp_path / "x.parquet", rows, "dpo")
    assert not (tmp_path / "x.parquet").exists()
    assert write_rows(tmp_path / "x.jsonl", rows, "dpo") == 1
