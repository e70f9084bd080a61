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


def _asked(item) -> str:
    return item.question.removeprefix("What is ").split("'s ")[0]


def test_embedded_grounded_data_asks_about_disjoint_people():
    from realign.data.datasets import GroundedDataConfig, load_data

    cfg = GroundedDataConfig(n_people=60, n_prompts=100, n_sft_target=40, n_sft_benchmark=20, n_eval=30, n_dev=20)
    b = load_data(cfg)
    train, dev, ev = b.grounded, b.dev.items, b.target.items
    assert len(train) == 100 and len(dev) == 20 and len(ev) == 30 and b.target.name == "grounded"
    people = [
        {_asked(i) for i in s} | {p.text.split("'s ")[0] for i in s for p in i.passages} for s in (train, dev, ev)
    ]
    assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
    # stage 1 answers from the sources without citing or abstaining; the benchmark is digit copy
    grounded_sft = [(p, c) for p, c in b.sft if p.startswith("Sources:")]
    assert len(grounded_sft) == 40 and not any("[" in c or c == "I don't know" for _, c in grounded_sft)
    assert len(b.sft) == 60 and [e.name for e in b.benchmarks] == ["copy"]
    assert b.answers[train[0].prompt()] == train[0].target() and len(b.replay) == 20
    assert b.target.answers == [i.target() for i in ev]


def test_grounded_files_with_their_own_abstention(tmp_path):
    from realign.data.datasets import EvalSet, GroundedDataConfig, load_data

    row = {"question": "What is bako's pet?", "passages": [{"id": "a", "text": "bako's pet is fish."}]}
    rows = [{**row, "answer": "fish"}, {**row, "question": "What is bako's city?", "answer": "No answer."}]
    path = write(tmp_path / "g.jsonl", rows)
    cfg = GroundedDataConfig(
        source="files",
        prompts=path,
        abstention="No answer.",
        eval_sets=[EvalSet(name="held", path=path, role="target")],
    )
    b = load_data(cfg)
    assert [i.target() for i in b.grounded] == ["fish [a]", "No answer."]
    assert b.target.items is not None and b.dev is None
    with pytest.raises(DataFormatError, match="is in no passage and is not the abstention"):
        load_data(cfg.model_copy(update={"abstention": "I don't know"}))
    qa = write(tmp_path / "qa.jsonl", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(DataFormatError, match="target evaluation set is not grounded rows"):
        load_data(cfg.model_copy(update={"eval_sets": [EvalSet(name="qa", path=qa, role="target")]}))


def test_an_open_set_has_prompts_a_scorer_and_optional_references(tmp_path):
    from realign.data.datasets import DataConfig, EvalSet, load_data

    judge = str(tmp_path / "judge")
    ev = write(tmp_path / "open.jsonl", [{"prompt": "Write a haiku"}, {"prompt": "Explain DPO", "reference": "It..."}])
    bench = write(tmp_path / "b.jsonl", [{"prompt": "1+1", "answer": "2"}])
    # data.prompts may leave answers out (a judge scores them); given ones are kept for the verifier
    prompts = write(tmp_path / "p.jsonl", [{"prompt": "Tell me a joke"}, {"prompt": "2+2", "answer": "4"}])
    cfg = DataConfig(
        source="files",
        prompts=prompts,
        eval_sets=[
            EvalSet(name="chat", path=ev, role="target", format="open", judge_model=judge),
            EvalSet(name="math", path=bench, role="benchmark"),
        ],
    )
    bundle = load_data(cfg)
    assert bundle.prompts == ["Tell me a joke", "2+2"] and bundle.answers == {"2+2": "4"}
    t = bundle.target
    assert t.format == "open" and t.scorer == ("judge", judge) and t.metric == "chat_score"
    assert t.prompts == ["Write a haiku", "Explain DPO"] and t.answers == ["", ""]
    # perplexity reads the reference only where there is one, and the benchmark's answers
    assert bundle.heldout_text == [("Explain DPO", "It..."), ("1+1", "2")]
    assert bundle.benchmarks[0].metric == "math_accuracy"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"format": "open"}, "needs exactly one scorer, judge_model or reward_model (got 0)"),
        ({"format": "open", "judge_model": "j", "reward_model": "r"}, "needs exactly one scorer"),
        ({"format": "open", "judge_model": "j", "role": "benchmark"}, "an open set can only be the target"),
        ({"judge_model": "j"}, "judge_model rates open sets only; format 'qa' has checkable answers"),
    ],
)
def test_an_open_set_needs_one_scorer_and_the_target_role(fields, message):
    from pydantic import ValidationError

    from realign.data.datasets import EvalSet

    with pytest.raises(ValidationError, match=re.escape(message)):
        EvalSet(**{"name": "t", "path": "x.jsonl", "role": "target", **fields})


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"reference": "r"}', "missing or empty field 'prompt'"),
        ('{"prompt": "p", "reference": 3}', "'reference' is int (expected a string or none)"),
        ('{"prompt": "a"}', "same prompt as line 1 (expected each prompt once)"),
    ],
)
def test_bad_open_rows_are_file_line_errors(tmp_path, line, reason):
    from realign.data.datasets import EvalSet, read_eval_set

    path = tmp_path / "open.jsonl"
    path.write_text('{"prompt": "a"}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:2: {re.escape(reason)}"):
        read_eval_set(EvalSet(name="o", path=str(path), role="target", format="open", judge_model="j"))
