"""Benchmarks from local files: MMLU-style multiple choice by log-likelihood, GSM8K-style math by the final number,
read by the eval set's format and scored through score_eval_sets like the prompt/answer sets."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from realign.data.datasets import DataConfig, EvalSet, choice_prompt, load_data, math_reference, read_eval_set
from realign.data.formats import DataFormatError
from realign.eval.benchmarks import choice_loglikelihoods, numbers_match, pick
from realign.eval.metrics import capability_retention
from realign.eval.probes import eval_metrics, score_eval_sets
from realign.model.generate import prompt_tokens
from realign.model.load import load_model

CHOICE_ROWS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "A"},
    {"question": "Which is a colour?", "choices": ["dog", "blue", "run"], "answer": "c"},
]
MATH_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 250 pens. How many in 4 boxes?", "answer": "250 * 4 = 1000\n#### 1,000"},
    {"question": "What is 6 times 7?", "answer": 42},
]


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_choice_prompt_is_lm_eval_mmlu_style():
    assert choice_prompt(" Q? ", ["x", "y"]) == "Q?\nA. x\nB. y\nAnswer:"


def test_choice_rows_take_index_and_letter_answers(tmp_path):
    items = read_eval_set(
        EvalSet(name="mc", role="benchmark", format="choice", path=_jsonl(tmp_path / "mc.jsonl", CHOICE_ROWS))
    )
    assert items.format == "choice"
    assert items.labels == [1, 0, 2]
    assert items.answers == ["B", "A", "C"]
    assert items.choices[0] == ["3", "4", "5", "22"]
    assert items.prompts[0] == choice_prompt("What is 2 + 2?", ["3", "4", "5", "22"])
    assert items.references()[2] == "C. run"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "answer 4 is out of range for 4 choices"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}, "answer 'E' is out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": "AB"}, "neither an index nor a letter"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "neither an index nor a letter"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "'choices' is not a list of 2-26"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "'choices' is not a list of 2-26"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "missing or empty field 'question'"),
        ({"question": "q", "choices": ["a", "b"]}, "missing field 'answer'"),
        ("{not json", "invalid JSON"),
    ],
)
def test_bad_choice_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "mc.jsonl", [CHOICE_ROWS[0], row])
    with pytest.raises(DataFormatError) as err:
        read_eval_set(EvalSet(name="mc", role="benchmark", format="choice", path=path))
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)


def test_math_rows_keep_the_number_after_hashes(tmp_path):
    items = read_eval_set(
        EvalSet(name="gsm", role="benchmark", format="math", path=_jsonl(tmp_path / "m.jsonl", MATH_ROWS))
    )
    assert items.format == "math"
    assert items.answers == ["7", "1,000", "42"]
    assert items.references()[0] == "3 + 4 = 7\n#### 7"  # the worked solution, for perplexity and decontamination
    assert math_reference("no marker 12") == "no marker 12"
    assert math_reference("a #### b #### 5 ") == "5"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "answer": "work\n#### none"}, "no number after '####'"),
        ({"question": "q", "answer": "no digits at all"}, "no number in the answer"),
        ({"question": "q"}, "missing or empty field 'answer'"),
        ([1, 2], "not an object"),
    ],
)
def test_bad_math_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "m.jsonl", [MATH_ROWS[0], row])
    with pytest.raises(DataFormatError) as err:
        read_eval_set(EvalSet(name="gsm", role="benchmark", format="math", path=path))
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)


def test_numbers_match_compares_the_last_number_as_a_number():
    assert numbers_match("so the answer is 42.0", "42")
    assert numbers_match("They have 1,000 pens.", "1000")
    assert numbers_match("1000", "1,000")
    assert numbers_match("3 + 4 = 7", "7")
    assert not numbers_match("7 then 8", "7")  # the last number counts
    assert not numbers_match("no idea", "7")
    assert numbers_match("-5", "-5.0")


def _direct_loglik(model, tokenizer, prompt: str, continuation: str, chat: bool) -> float:
    """Summed log-probability of the continuation's tokens, one unpadded sequence at a time."""
    p = prompt_tokens(tokenizer, prompt, chat)
    c = list(tokenizer.encode(continuation, add_special_tokens=False))
    ids = mx.array([p + c])
    logits = model(ids[:, :-1]).astype(mx.float32)[0]
    logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    return float(sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(c)))


@pytest.mark.parametrize("chat", [True, False])
def test_choice_loglikelihoods_match_the_model_and_argmax_is_the_prediction(tiny, chat):
    prompts = [choice_prompt(r["question"], r["choices"]) for r in CHOICE_ROWS]
    sizes = [len(r["choices"]) for r in CHOICE_ROWS]
    # batch_size 4 splits one item's options across batches: the rows must still line up
    lls = choice_loglikelihoods(tiny.model, tiny.tokenizer, prompts, sizes, chat=chat, batch_size=4)
    assert [len(x) for x in lls] == sizes
    for prompt, ll, n in zip(prompts, lls, sizes):
        letters = [chr(65 + k) if chat else f" {chr(65 + k)}" for k in range(n)]
        direct = np.array([_direct_loglik(tiny.model, tiny.tokenizer, prompt, c, chat) for c in letters])
        np.testing.assert_allclose(ll, direct, rtol=1e-4, atol=1e-4)
    picked, correct, prob = pick(lls, [1, 0, 2])
    assert picked == [int(np.argmax(x)) for x in lls]
    assert correct == [p == y for p, y in zip(picked, [1, 0, 2])]
    assert all(0.0 < q < 1.0 for q in prob)


def test_pick_by_hand():
    lls = [np.log(np.array([0.2, 0.5, 0.3])), np.array([-1.0, -1.0])]
    picked, correct, prob = pick(lls, [1, 1])
    assert picked == [1, 0]  # a tie goes to the first option
    assert correct == [True, False]
    assert prob == pytest.approx([0.5, 0.5])


def test_a_recipe_with_choice_and_math_benchmarks_loads_and_scores(tiny, tmp_path):
    qa = _jsonl(
        tmp_path / "qa.jsonl", [{"prompt": "Reverse: 123", "answer": "321"}, {"prompt": "Reverse: 45", "answer": "54"}]
    )
    cfg = DataConfig(
        source="files",
        prompts=qa,
        eval_sets=[
            EvalSet(name="target", role="target", path=qa),
            EvalSet(name="mmlu", role="benchmark", format="choice", path=_jsonl(tmp_path / "mc.jsonl", CHOICE_ROWS)),
            EvalSet(
                name="gsm8k",
                role="benchmark",
                format="math",
                max_tokens=8,
                path=_jsonl(tmp_path / "m.jsonl", MATH_ROWS),
            ),
        ],
    )
    bundle = load_data(cfg)
    assert [e.format for e in bundle.eval_sets] == ["qa", "choice", "math"]
    assert [b.name for b in bundle.benchmarks] == ["mmlu", "gsm8k"]
    texts = bundle.eval_texts()
    assert any("A. Paris" in t and "B. Rome" in t for t in texts)  # decontamination sees question and options
    assert any("250 * 4 = 1000" in t for t in texts)  # and the worked solutions
    assert ("What is 6 times 7?", "42") in bundle.heldout_text

    scored = score_eval_sets(tiny.model, tiny.tokenizer, bundle.eval_sets, max_tokens=4)
    for name, n in (("target", 2), ("mmlu", 3), ("gsm8k", 3)):
        r = scored[name]
        assert 0.0 <= r.accuracy <= 1.0 and 0.0 <= r.mean_score <= 1.0
        assert len(r.exact) == len(r.scores) == len(r.predictions) == n
    assert set(scored["mmlu"].predictions) <= {"A", "B", "C", "D"}
    assert scored["mmlu"].predictions[1] in {"A", "B"}  # only the item's own options can be chosen
    assert scored["gsm8k"].exact == [
        numbers_match(p, a) for p, a in zip(scored["gsm8k"].predictions, ["7", "1,000", "42"])
    ]
    metrics = eval_metrics(scored)
    retention = capability_retention({"mmlu_accuracy": 0.5, "gsm8k_accuracy": 0.5}, metrics)
    assert retention.per_benchmark == {
        "mmlu_accuracy": pytest.approx(scored["mmlu"].accuracy / 0.5),
        "gsm8k_accuracy": pytest.approx(scored["gsm8k"].accuracy / 0.5),
    }
