"""Training files a run wrote: their format (given or guessed), texts for decontamination, examples for SFT."""

import json
import re

import pandas as pd
import pytest

from realign.data.datasets import TrainingFile
from realign.data.formats import DataFormatError


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preference_rows_give_texts_and_chosen_examples(tmp_path):
    f = TrainingFile(
        path=write(
            tmp_path / "t.jsonl",
            [
                {"prompt": "p1", "chosen": "good", "rejected": "bad"},
                {"prompt": "p2", "chosen": "yes", "rejected": "no"},
            ],
        )
    )
    assert f.row_format() == "dpo"
    assert f.texts() == ["p1 good bad", "p2 yes no"]
    assert f.examples() == [("p1", "good"), ("p2", "yes")]


def test_sft_and_grpo_rows(tmp_path):
    sft = TrainingFile(path=write(tmp_path / "s.jsonl", [{"instruction": "q", "output": "a"}]))
    assert sft.row_format() == "sft" and sft.examples() == [("q", "a")] and sft.texts() == ["q a"]
    grpo = TrainingFile(path=write(tmp_path / "g.jsonl", [{"prompt": "q", "responses": [{"text": "x", "score": 1.0}]}]))
    assert grpo.texts() == ["q x"]
    with pytest.raises(ValueError, match="no single completion"):
        grpo.examples()


def test_parquet_and_an_explicit_format(tmp_path):
    pd.DataFrame({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}).to_parquet(tmp_path / "t.parquet")
    f = TrainingFile(path=str(tmp_path / "t.parquet"), format="dpo")
    assert f.texts() == ["p c r"]
    assert TrainingFile(path=str(tmp_path / "t.parquet")).row_format() == "dpo"


def test_unknown_rows_name_the_file(tmp_path):
    f = TrainingFile(path=write(tmp_path / "x.jsonl", [{"foo": 1}]))
    with pytest.raises(DataFormatError, match="x.jsonl"):
        f.texts()


def test_a_prompt_with_two_different_answers_is_reported_not_graded_against_the_last(tmp_path):
    from realign.data.datasets import DataConfig, EvalSet, load_data

    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "2+2", "answer": "4"},
        {"prompt": "3+3", "answer": "6"},
        {"prompt": "2+2", "answer": "5"},
        {"prompt": "3+3", "answer": "6"},
        {"prompt": "3+3", "answer": "7"},
    ]
    write(prompts, rows)
    ev = tmp_path / "eval.jsonl"
    write(ev, [{"prompt": "1+1", "answer": "2"}])
    cfg = DataConfig(source="files", prompts=str(prompts), eval_sets=[EvalSet(name="t", path=str(ev), role="target")])
    with pytest.raises(DataFormatError) as info:
        load_data(cfg)
    message = str(info.value)
    assert message.startswith(f"{prompts}:3: same prompt as line 1 with a different answer ('5' here, '4' there)")
    assert "1 more such lines" in message
    write(prompts, [r for r in rows if r["answer"] not in ("5", "7")])  # the same prompt twice, same answer: fine
    assert load_data(cfg).prompts.count("3+3") == 2


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"prompt": "caf\xe9", "answer": "1"}', "invalid UTF-8 at byte 16"),
        (b'{"prompt": "p", "answer": "1", "n": ' + b"9" * 5000 + b"}", "invalid JSON"),
        (b'{"prompt": "p", "answer": "1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid JSON"),
    ],
)
def test_hostile_prompt_lines_are_file_line_errors(tmp_path, line, reason):
    from realign.data.datasets import DataConfig, EvalSet, load_data

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "ok", "answer": "1"}\n' + line + b"\n")
    ev = tmp_path / "eval.jsonl"
    write(ev, [{"prompt": "1+1", "answer": "2"}])
    cfg = DataConfig(source="files", prompts=str(prompts), eval_sets=[EvalSet(name="t", path=str(ev), role="target")])
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(prompts))}:2: {reason}"):
        load_data(cfg)
