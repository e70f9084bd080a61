"""The curation front door: request -> data type, size, plan -> a gated run on documents -> curated/.../train.jsonl.

The slow tests run `realign curate` end to end on the tiny model: DPO pairs from a PDF generated here, grounded QA
from a Markdown folder, and the nightly flow twice on one folder (the second run curates only what was added)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import yaml
from test_documents import NOTES, make_markdown_folder, make_pdf
from typer.testing import CliRunner

from conftest import REPO, run_cli
from realign.data.curation import (
    WORKFLOW_OF,
    curated_dir,
    data_type_of,
    model_size_of,
    source_slug,
    sources_named,
    understand,
)
from realign.data.doc_items import ItemsConfig, answer_span, build_items, choice_rows, held_out, quality_score
from realign.data.documents import DocPassage, read_documents
from realign.data.grounded import citation_problem

# 30 requests as users write them: (request, data type, model size in billions or None).
REQUESTS = [
    ("Curate DPO preference pairs from /data/books/ml_textbook.pdf for Qwen 7B", "dpo", 7.0),
    ("Build chosen/rejected pairs from the support transcripts for Llama-3.1-70B-Instruct", "dpo", 70.0),
    ("I need ORPO data from handbook.md to tune mistral 7b", "dpo", 7.0),
    ("make CPO training triples out of our wiki export for gemma-2-9b", "dpo", 9.0),
    ("preference data comparing good and bad answers from forum.html, Llama 3.1 405B", "dpo", 405.0),
    ("DeepSeek-V3 DPO pairs from the changelog", "dpo", 671.0),
    ("Which answer do users prefer? Pairwise data from the survey exports for a 1.5b model", "dpo", 1.5),
    (
        "Prepare data to train a reward model and then run RL against it, from reviews.jsonl, target Qwen2.5-14B",
        "srf",
        14.0,
    ),
    ("Turn our thumbs-up/thumbs-down chat logs into training data for a 32B model", "srf", 32.0),
    ("supervised reward fine-tuning set from product_faq.html for Phi-3-mini", "srf", 3.8),
    ("build a reward model dataset from ratings.jsonl, qwen2.5 72b", "srf", 72.0),
    ("SRF run on the forum's upvoted answers for Mixtral 8x7B", "srf", 46.7),
    ("Create verifiable math problems with answers from algebra_notes.pdf for Qwen2.5-Math-1.5B", "rlvr", 1.5),
    ("Generate coding tasks with unit tests from the python tutorial for deepseek-coder 6.7b", "rlvr", 6.7),
    ("RLVR data from physics.pdf, llama 3.2 3B", "rlvr", 3.0),
    ("questions with executable checks from the spec, for a 0.5B model", "rlvr", 0.5),
    ("math word problems with final numeric answers for GRPO from the worksheets, Qwen 1.5B", "rlvr", 1.5),
    ("Teach the model to cite its sources: grounded QA from policies/ for Llama 3.1 8B", "antihallucination", 8.0),
    ("Reduce hallucinations in our 70B assistant using the compliance manual", "antihallucination", 70.0),
    ("train it to say I don't know when the docs don't cover it, tinyllama 1.1b", "antihallucination", 1.1),
    ("Anti-hallucination data from handbook.md for mixtral-8x22b", "antihallucination", 141.0),
    ("calibration data so the model abstains on unanswerable questions, 270M", "antihallucination", 0.27),
    ("Refusal training: decline questions not covered by the contract, for Gemma 2B", "antihallucination", 2.0),
    ("Factual QA with citations from the knowledge base, phi-3-medium", "antihallucination", 14.0),
    ("Instruction data from the onboarding docs for Qwen 7B", "sft", 7.0),
    ("Q&A pairs from lecture_notes.pdf to supervised fine-tune SmolLM 360M", "sft", 0.36),
    ("Make a dataset from notes.txt for the tiny model", "sft", None),
    ("SFT examples from the API reference for phi-2", "sft", 2.7),
    ("not DPO, just plain instruction tuning data from README.md for a 3B", "sft", 3.0),
    ("Curate data from report.pdf for a 7 billion parameter model", "sft", 7.0),
]


def test_thirty_requests_dry_run_json_get_data_type_and_size_right():
    from realign.cli.main import app

    assert len(REQUESTS) == 30 and {k for _, k, _ in REQUESTS} == set(WORKFLOW_OF)
    right, wrong = 0, []
    for request, kind, size in REQUESTS:
        res = CliRunner().invoke(app, ["curate", request, "--dry-run", "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        assert got["workflow"] == WORKFLOW_OF[got["data_type"]] and got["data_type_reason"]
        if got["data_type"] == kind and got["params_b"] == size:
            right += 1
        else:
            wrong.append((request, got["data_type"], got["params_b"], got["data_type_reason"], got["size_reason"]))
    print(f"\ndata type and model size right for {right} of {len(REQUESTS)} requests")
    assert right >= 27, wrong


def test_dry_run_json_prints_the_decision_and_the_plan_without_running(tmp_path):
    pdf = make_pdf(tmp_path / "ml_textbook.pdf", NOTES)
    proc = run_cli(
        "curate", "Curate DPO preference pairs from ml_textbook.pdf for Qwen 7B", "--dry-run", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert (d["data_type"], d["workflow"], d["params_b"], d["sources"]) == ("dpo", "dpo", 7.0, ["ml_textbook.pdf"])
    # the seeds' rules: 7B on the M4 Max at batch 32, the split over the questions the PDF gave, the MLX environment
    assert d["machine"] == ["m4-max"] and d["batch_size"]["m4-max"] == 32 and d["mode"] == "separate"
    assert d["examples"] == sum(d["split"].values()) == 36
    assert d["split"]["m4-max"] > d["split"]["m3-ultra"] > 0  # by measured throughput, not 50/50
    assert d["environment"] == {
        "MLX_METAL_PREALLOCATE": "1",
        "MLX_METAL_FAST_SYNCH": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    assert d["estimated_seconds"] > 0 and d["output"] == f"curated/dpo_ml_textbook_{date.today():%Y%m%d}/train.jsonl"
    assert not (tmp_path / "curated").exists() and not (tmp_path / "runs").exists()  # nothing ran
    assert pdf.is_file()
    # a 120B model goes to the M3 Ultra at batch 4; no size and no model: no plan, said so
    big = run_cli("curate", "DPO pairs for a 120B model", "--dry-run", "--json", cwd=tmp_path)
    b = json.loads(big.stdout)
    assert b["machine"] == ["m3-ultra"] and b["batch_size"] == {"m3-ultra": 4}
    none = json.loads(run_cli("curate", "some data", "--dry-run", "--json", cwd=tmp_path).stdout)
    assert none["params_b"] is None and none["plan"] is None and none["data_type"] == "sft"
    assert "no model size" in none["cost_note"]
    # a source that is not there fails at once, naming it (exit 2), before any server starts
    missing = run_cli("curate", "DPO pairs from gone.pdf", cwd=tmp_path)
    assert missing.returncode == 2 and "gone.pdf: no such file or folder" in missing.stderr
    # a table for people
    text = run_cli("curate", "grounded QA for Llama 3.1 8B", "--dry-run", cwd=tmp_path)
    assert "data type: antihallucination" in text.stdout and "batch size:" in text.stdout


def test_the_model_given_sizes_the_plan_when_the_request_names_no_size(tiny_model_dir):
    from realign.cli.main import app

    def dry(*args: str) -> dict:
        res = CliRunner().invoke(app, ["curate", "DPO pairs from the notes", "--dry-run", "--json", *args])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    hub = dry("--model", "mlx-community/Qwen2.5-7B-Instruct-4bit")
    assert hub["params_b"] == 7.0 and hub["size_reason"].startswith("--model mlx-community/Qwen2.5-7B")
    local = dry("--model", str(tiny_model_dir))  # a directory: its config.json, counted by the plan
    assert 0 < local["params_b"] < 0.01 and local["plan"]["model"] == str(tiny_model_dir)
    assert dry("--model", "tiny")["params_b"] is None  # built by the run: planned after stage 1
    # the request's own size wins over the model's name
    res = CliRunner().invoke(app, ["curate", "DPO pairs for a 70B", "--model", "org/x-7B", "--dry-run", "--json"])
    assert json.loads(res.output)["params_b"] == 70.0


def test_data_type_reasons_and_negations():
    d = data_type_of("Curate DPO preference pairs from notes.pdf")
    assert d.data_type == "dpo" and "'dpo'" in d.reason and "'preference'" in d.reason
    neg = data_type_of("no preference pairs please, instruction data instead")
    assert neg.data_type == "sft" and "negated: 'preference' (dpo)" in neg.reason
    # anti-hallucination wording is never negated: not hallucinating is the point
    assert data_type_of("teach it to abstain instead of hallucinating").data_type == "antihallucination"
    # SRF is supervised reward fine-tuning, not self-refinement or supervised fine-tuning
    assert data_type_of("supervised reward fine-tuning data").data_type == "srf"
    assert data_type_of("supervised fine-tuning data").data_type == "sft"
    unclear = data_type_of("some training data from notes.txt")
    assert unclear.data_type == "sft" and unclear.reason.startswith("no data type named")
    assert WORKFLOW_OF == {
        "dpo": "dpo",
        "srf": "srf",
        "sft": "srf",
        "rlvr": "rlvr",
        "antihallucination": "antihallucination",
    }


@pytest.mark.parametrize(
    "text, size",
    [
        ("Qwen 7B", 7.0),
        ("qwen2.5-7b-instruct", 7.0),
        ("a 0.5B model", 0.5),
        ("gemma-3-270M", 0.27),
        ("TinyLlama-1.1b-chat", 1.1),
        ("tinyllama", 1.1),
        ("phi-3-mini", 3.8),
        ("Phi 3 Mini", 3.8),
        ("mixtral 8x7B", 46.7),
        ("Mixtral-8x22B-v0.1", 141.0),
        ("4x2B experts", 8.0),
        ("a 13 billion parameter model", 13.0),
        ("llama 3.2 3B", 3.0),
        ("500 MB of logs for the model", None),
        ("Curate 1M preference pairs for Qwen 7B", 7.0),  # a count of data is not the model's size
        ("500M tokens of SFT data for Llama 3 8B", 8.0),
        ("2M training examples for a 1.5b model", 1.5),
        ("no size here", None),
    ],
)
def test_model_size_in_any_spelling(text, size):
    got = model_size_of(text)
    assert got.params_b == (pytest.approx(size) if size is not None else None), got.reason
    assert got.reason


def test_publish_appends_keeps_repeats_in_the_rejects_and_never_publishes_a_bad_row(tmp_path):
    from realign.data.formats import DataFormatError
    from tasks.curate.items import new_files, publish, remember

    out = tmp_path / "curated" / "sft_notes_20261203"
    a, b, c = ({"instruction": f"q{i}", "output": f"a{i}"} for i in range(3))
    assert publish.fn(str(out), [a, b], "sft", [{"reason": "too short"}]) == (2, 2)
    assert publish.fn(str(out), [b, c], "sft", []) == (1, 3)
    lines = (out / "train.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [a, b, c]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects[0] == {"reason": "too short"} and rejects[1]["row"] == b and "already in" in rejects[1]["reason"]
    with pytest.raises(DataFormatError):
        publish.fn(str(out), [{"instruction": "q9"}], "sft", [])  # no output: does not read back as sft
    assert (out / "train.jsonl").read_text().splitlines() == lines and not list(out.glob(".*staged"))
    # the state records the digests compared, not the files re-read after the run
    doc = tmp_path / "inbox" / "n.md"
    doc.parent.mkdir()
    doc.write_text("first version")
    new, old, digests = new_files([str(doc.parent)], {})
    assert new == [doc] and old == []
    doc.write_text("rewritten during the run")
    remember(tmp_path / "state.json", {}, digests)
    state = json.loads((tmp_path / "state.json").read_text())
    assert new_files([str(doc.parent)], state)[0] == [doc]  # curated again next time


def test_sources_and_output_folder():
    assert sources_named("Curate DPO pairs from ~/books/ml_textbook.pdf and docs/policies/ for Qwen 7B") == [
        "~/books/ml_textbook.pdf",
        "docs/policies/",
    ]
    assert source_slug("docs/policies/") == "policies" and source_slug("ml_textbook.pdf") == "ml_textbook"
    assert (
        str(curated_dir("curated", "dpo", "ml_textbook.pdf", date(2026, 11, 21))) == "curated/dpo_ml_textbook_20261121"
    )
    assert (
        str(curated_dir("c", "antihallucination", "Wiki Dump", date(2026, 1, 2)))
        == "c/antihallucination_wiki_dump_20260102"
    )
    with pytest.raises(ValueError, match="no letters or digits"):
        source_slug("...")
    with pytest.raises(ValueError, match="the request is empty"):
        understand("  ")


def test_items_from_passages_are_split_deduplicated_decontaminated_and_grounded(tmp_path):
    docs = read_documents([make_pdf(tmp_path / "notes.pdf", NOTES)])
    items = build_items(docs.passages, ItemsConfig(eval_fraction=0.3))
    assert answer_span("Adam was introduced by Kingma and Ba in 2014.") == "2014"
    assert answer_span("It was proposed by Vaswani and colleagues.") == "Vaswani"
    assert answer_span("the weights come from a softmax over products") == "products"
    train_ids = {c.passage_id for c in items.train_cloze}
    eval_ids = {c.passage_id for c in items.eval_cloze}
    assert train_ids and eval_ids and not train_ids & eval_ids  # held out by passage
    for c in items.train_cloze + items.eval_cloze:
        assert c.answer in c.sentence and "____" in c.prompt and c.answer not in c.blanked.replace("____", "", 1)
    # grounded: answerable items cite the passage that states the answer; unanswerable ones show one that does not
    grounded = items.train_grounded + items.eval_grounded
    assert {i.answerable for i in grounded} == {True, False}
    answer_of = {
        f"Fill in the blank from the sources: {c.blanked}": c.answer for c in items.train_cloze + items.eval_cloze
    }
    for g in grounded:
        assert citation_problem(g) is None
        if not g.answerable:
            assert g.citations == () and answer_of[g.question].lower() not in g.passages[0].text.lower()
    # decontamination: a training sentence sharing 6 (here; 13 by default) words with a held-out one is rejected
    held = items.eval_cloze[0]
    pid = next(f"copy:{i}" for i in range(100) if not held_out(f"copy:{i}", 0.3))
    dup = DocPassage(pid, "x", None, 1, "As noted before, " + held.sentence[0].lower() + held.sentence[1:])
    again = build_items([*docs.passages, dup], ItemsConfig(eval_fraction=0.3, decontamination_ngram=6))
    assert any("decontamination" in r["reason"] and r["passage"] == pid for r in again.rejects)
    assert pid not in {c.passage_id for c in again.train_cloze}
    # the same passages give the same split (a hash of the id, not the order)
    assert {
        c.passage_id for c in build_items(docs.passages[::-1], ItemsConfig(eval_fraction=0.3)).eval_cloze
    } == eval_ids


def test_choice_rows_cycle_the_right_letter_and_quality_score_by_hand():
    from realign.data.doc_items import Cloze

    items = [Cloze(f"p:{i}", f"Value number {i} is {10 + i} here in the text.", str(10 + i)) for i in range(5)]
    rows = choice_rows(items, [c.answer for c in items] + ["word"], seed=0)
    assert [r["answer"] for r in rows] == [0, 1, 2, 3, 0]  # A B C D A
    assert all(len(r["choices"]) == 4 and "word" not in r["choices"] for r in rows)  # numbers among numbers
    assert rows[0]["question"] == "Value number 0 is ____ here in the text."
    # grounded 1, self_contained 8/8, informative 1/3, clean 1, no_leak 1 -> 10 * (4 + 1/3) / 5
    score, parts = quality_score("Fill in the blank: Adam was introduced by Kingma and Ba in ____.", "2014", "in 2014")
    assert parts == {"grounded": 1.0, "self_contained": 1.0, "informative": pytest.approx(1 / 3), "clean": 1.0,
                     "no_leak": 1.0}  # fmt: skip
    assert score == pytest.approx(10 * (4 + 1 / 3) / 5, abs=1e-3)
    leak, p2 = quality_score("Say paris: the capital is paris", "paris", "nothing")
    assert p2["no_leak"] == 0.0 and p2["grounded"] == 0.0 and p2["self_contained"] == pytest.approx(6 / 8)
    assert leak == pytest.approx(10 * (0 + 0.75 + 1 / 3 + 1 + 0) / 5, abs=1e-3)


# --- end to end -------------------------------------------------------------------------------------------------

SMALL_DPO = {
    "sft": {"train": {"steps": 40, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 5, "lora": None,
                      "metrics_every": 20}},
    "pairs": {"generation": {"n": 4, "batch_size": 64, "max_tokens": 8}},
    "reward_model": {"steps": 10},
    "dpo": {"train": {"steps": 4, "batch_size": 4, "learning_rate": 5e-5, "checkpoint_every": 2, "metrics_every": 2}},
    "iterations": {"max_rounds": 1},
    "control": False,
    "eval_max_tokens": 8,
    "thresholds": {
        "preference": {"min_pairs": 2, "min_preference_gap": 0.15},
        "sft": {"max_perplexity": 100000},
        "tiers": {"agreement_rate": {"direction": "higher", "high": 0.0, "medium": 0.0}},
        "reward_model": {"min_accuracy": 0.0},
        "optimization": {"max_kl": 100.0, "min_reward_margin": -100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip
SMALL_AH = {
    "sft": {"train": {"steps": 40, "batch_size": 16, "learning_rate": 1e-3, "lora": None, "metrics_every": 20}},
    "citation": {"train": {"steps": 80, "batch_size": 16, "learning_rate": 1e-3, "lora": None, "metrics_every": 30}},
    "detection": {"generation": {"n": 2, "batch_size": 64, "max_tokens": 8, "temperature": 1.0}, "max_items": 20},
    "optimization": {"train": {"steps": 4, "batch_size": 4, "learning_rate": 1e-5, "lora": None,
                               "checkpoint_every": 2, "metrics_every": 2}},
    "iterations": {"max_rounds": 1},
    "control": False,
    "eval_max_tokens": 8,
    "thresholds": {
        "sft": {"max_perplexity": 100000},
        "factuality": {"min_factuality": 0.0, "max_hallucination_rate": 1.0, "min_factuality_gain": -1.0,
                       "max_hallucination_change": 1.0},
        "tiers": {"calibration_error": {"direction": "lower", "high": 1.0, "medium": 1.0}},
        "optimization": {"max_kl": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip


def curate_cli(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`realign curate ARGS` in a fresh interpreter in `cwd`, as a user runs it (its own temporary Prefect server)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("MLX_METAL_PREALLOCATE", "MLX_METAL_FAST_SYNCH", "TOKENIZERS_PARALLELISM"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "realign.cli", "curate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.slow
def test_curate_dpo_pairs_from_a_generated_pdf_end_to_end(tmp_path):
    make_pdf(tmp_path / "notes.pdf", NOTES)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({"config": SMALL_DPO}))
    request = "Curate DPO preference pairs from notes.pdf for the tiny model"
    t0 = time.perf_counter()
    proc = curate_cli(tmp_path, request, "--source", "notes.pdf", "--config", "small.yaml")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\n{proc.stdout}wall {wall:.0f} s")
    out = tmp_path / "curated" / f"dpo_notes_{date.today():%Y%m%d}"
    for label in (
        "data type: dpo",
        "workflow: dpo",
        "tier:",
        "examples processed:",
        "machine:",
        "batch size:",
        "time (s):",
        "cost per example:",
        f"output: curated/dpo_notes_{date.today():%Y%m%d}/train.jsonl",
    ):
        assert label in proc.stdout, label  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tier"] in ("HIGH", "MEDIUM") and summary["documents"] == ["notes.pdf"]
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == summary["examples"] >= 2
    # the published rows are the gated pairs of stage 2, prompts from the PDF's sentences
    run = Path(summary["run_dir"])
    stage2 = [json.loads(x) for x in (run / "02_preference_data" / "train.jsonl").read_text().splitlines()]
    assert rows == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in stage2]
    sentences = " ".join(p for page in NOTES for p in page)
    for r in rows:
        assert r["prompt"].startswith("Fill in the blank: ") and r["chosen"] != r["rejected"]
        before, after = r["prompt"].removeprefix("Fill in the blank: ").split("____")
        assert before in sentences and after in sentences
    # every stage was gated: seven gate reports, and the run's tiers in its summary
    assert len(list(run.glob("0*/gate_*.json"))) >= 7
    assert summary["environment"]["MLX_METAL_PREALLOCATE"] == "1" and summary["machine"] == ["m4-max"]


@pytest.mark.slow
def test_curate_grounded_questions_from_a_markdown_folder_end_to_end(tmp_path):
    make_markdown_folder(tmp_path / "kb")
    (tmp_path / "small.yaml").write_text(
        yaml.safe_dump(
            {"config": SMALL_AH, "items": {"max_passage_chars": 200, "eval_fraction": 0.3, "unanswerable": 0.5}}
        )
    )
    request = "Teach the model to cite the handbook and say I don't know otherwise, for the tiny model"
    t0 = time.perf_counter()
    proc = curate_cli(tmp_path, request, "--source", "kb", "--config", "small.yaml", "--json")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    shown = {k: summary[k] for k in ("data_type", "workflow", "tier", "examples", "output", "time_s")}
    print(f"\n{shown} wall {wall:.0f} s")
    assert (summary["data_type"], summary["workflow"]) == ("antihallucination", "antihallucination")
    assert summary["output"] == f"curated/antihallucination_kb_{date.today():%Y%m%d}/train.jsonl"
    rows = [json.loads(x) for x in (tmp_path / summary["output"]).read_text().splitlines()]
    assert len(rows) == summary["examples"] > 0
    ids = {p.id for p in read_documents([tmp_path / "kb"], max_chars=200).passages}
    answered = [r for r in rows if r["citations"]]
    assert answered and len(answered) < len(rows)  # cited answers and abstentions
    for r in rows:
        assert {p["id"] for p in r["passages"]} <= ids  # stable ids: file, paragraph (and part)
        for c in r["citations"]:
            cited = next(p for p in r["passages"] if p["id"] == c)
            assert r["answer"].lower() in cited["text"].lower()


@pytest.mark.slow
def test_nightly_curation_takes_only_the_documents_added_since_the_last_run(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.curate import curate
    from gates.gate import GateFailed

    for key in ("MLX_METAL_PREALLOCATE", "MLX_METAL_FAST_SYNCH", "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(key, raising=False)
    inbox = tmp_path / "inbox"
    make_markdown_folder(inbox, NOTES[:2])
    request = "Instruction data (Q&A) from the documents in inbox/ for Qwen 7B"
    kw = dict(sources=[str(inbox)], curated_root=str(tmp_path / "curated"), runs_root=str(tmp_path / "runs"))
    with prefect_test_harness(server_startup_timeout=120):
        first = curate(request, new_only=True, **kw)
        assert os.environ["MLX_METAL_PREALLOCATE"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "false"
        make_markdown_folder(tmp_path / "later", NOTES[2:])
        (tmp_path / "later" / "part1.md").rename(inbox / "part3.md")
        second = curate(request, new_only=True, **kw)
        third = curate(request, new_only=True, **kw)
        (tmp_path / "empty").mkdir()
        empty = curate(request, new_only=True, **{**kw, "sources": [str(tmp_path / "empty")]})
        # a REJECT publishes nothing: strict quality tiers on a fresh folder
        other = make_markdown_folder(tmp_path / "other", NOTES[:1])
        strict = {"thresholds": {"tiers": {"quality_score": {"direction": "higher", "high": 9.99, "medium": 9.98}}}}
        with pytest.raises(GateFailed, match="quality_score"):
            curate(request, sources=[str(other)], curated_root=str(tmp_path / "c2"), config=strict)
    out = tmp_path / "curated" / f"sft_inbox_{date.today():%Y%m%d}"
    assert first["data_type"] == "sft" and first["workflow"] == "srf" and first["tier"] in ("HIGH", "MEDIUM")
    assert first["examples_processed"] == first["examples"]  # every scored SFT row, published (none repeated)
    assert [Path(f).name for f in first["documents"]] == ["part1.md", "part2.md"]
    assert [Path(f).name for f in second["documents"]] == ["part3.md"] and second["documents_unchanged"] == 2
    lines = (out / "train.jsonl").read_text().splitlines()
    assert len(lines) == first["examples"] + second["examples"] == second["examples_in_file"]
    sources = [json.loads(x)["source"] for x in lines]
    assert sources[: first["examples"]] and all(s.startswith("part3:") for s in sources[first["examples"] :])
    assert all(not s.startswith("part3:") for s in sources[: first["examples"]])
    assert all(0 <= json.loads(x)["quality_score"] <= 10 for x in lines)
    assert third["skipped"] is True and "no new documents" in third["reason"] and "(3 unchanged)" in third["reason"]
    assert empty["skipped"] is True and "(0 unchanged)" in empty["reason"]  # an empty inbox is not an error
    assert first["machine"] == ["m4-max"] and first["params_b"] == 7.0
    assert not (tmp_path / "c2").exists() or not list((tmp_path / "c2").rglob("train.jsonl"))


SMALL_SRF = {
    "sft": SMALL_DPO["sft"],
    "pairs": SMALL_DPO["pairs"],
    "reward_model": {"training": {"train": {"steps": 10, "batch_size": 4, "learning_rate": 1e-4, "lora": None}}},
    "rl": {"rl": {"num_generations": 4, "max_completion_length": 8,
                  "train": {"steps": 4, "batch_size": 4, "learning_rate": 1e-5, "lora": None, "checkpoint_every": 2}},
           "probe_prompts": 8},
    "iterations": {"max_rounds": 1},
    "control": False,
    "eval_max_tokens": 8,
    "thresholds": {
        "preference": {"min_pairs": 2, "min_preference_gap": 0.15},
        "sft": {"max_perplexity": 100000},
        "tiers": {"agreement_rate": {"direction": "higher", "high": 0.0, "medium": 0.0}},
        "reward_model": {"min_accuracy": 0.0, "min_val_accuracy": 0.0, "max_train_val_gap": 1.0},
        "optimization": {"max_kl": 100.0, "min_entropy": 0.0, "max_entropy": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip
SMALL_RLVR = {
    "sft": SMALL_DPO["sft"],
    "verifier": {"kind": "exact"},
    "samples": {"generation": {"n": 4, "batch_size": 64, "max_tokens": 8, "temperature": 1.0}},
    "rl": SMALL_SRF["rl"],
    "iterations": {"max_rounds": 1},
    "control": False,
    "eval_max_tokens": 8,
    "thresholds": {
        "sft": {"max_perplexity": 100000},
        "verifiable": {"min_coverage": 0.0, "min_verified_rate_gain": -1.0},
        "optimization": {"max_kl": 100.0},
        "evaluation": {"min_capability_retention": 0.0},
    },
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_text, kind, recipe, fields",
    [
        ("Reward model then RL (supervised reward fine-tuning) data from notes.pdf, tiny model", "srf", SMALL_SRF,
         {"prompt", "chosen", "rejected"}),
        ("Verifiable questions with exact answers from notes.pdf for RLVR", "rlvr", SMALL_RLVR,
         {"problem", "solution", "responses"}),
    ],
)  # fmt: skip
def test_curate_srf_and_rlvr_from_a_pdf_end_to_end(tmp_path, request_text, kind, recipe, fields):
    make_pdf(tmp_path / "notes.pdf", NOTES)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({"config": recipe}))
    proc = curate_cli(tmp_path, request_text, "--source", "notes.pdf", "--config", "small.yaml", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["data_type"], summary["workflow"]) == (kind, kind) and summary["tier"] in ("HIGH", "MEDIUM")
    rows = [json.loads(x) for x in (tmp_path / summary["output"]).read_text().splitlines()]
    assert rows and len(rows) == summary["examples"] and all(set(r) >= fields for r in rows)
    prompts = {json.loads(x)["prompt"] for x in (Path(summary["run_dir"]) / "00_curation" / "prompts.jsonl").open()}
    assert {r.get("prompt", r.get("problem")) for r in rows} <= prompts  # questions from the PDF, as the run gated them
