"""Training files a run wrote: their format (given or guessed), texts for decontamination, examples for SFT."""

import json

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
