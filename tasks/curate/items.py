"""Curation steps around the workflow run: which documents are new, their items written as the workflow's data
files (with the rejects), the SFT items' quality table for their gate, and publishing the gated rows."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pandas as pd
from prefect import task
from pydantic import Field

from realign.data.curation import ROW_FORMAT_OF, source_slug
from realign.data.doc_items import CurationItems, ItemsConfig, build_items, quality_score
from realign.data.documents import document_files, read_documents
from realign.data.formats import first_record, guess_format, read_rows
from realign.io import atomic_path, write_json
from tasks.stages import StageResult

MIN_ITEMS = 4  # fewer training questions than this is not a dataset: said before anything trains


class NothingToCurate(ValueError):
    """The documents gave too few items for the data type; the message says how many and what to do."""


# --- which documents --------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_path(curated_root: str, data_type: str, source: str) -> Path:
    """Where the nightly curation remembers what it curated: ROOT/.state/<type>_<source>.json."""
    return Path(curated_root) / ".state" / f"{data_type}_{source_slug(source)}.json"


def read_state(path: Path) -> dict[str, str]:
    """{absolute file path: sha256} of the files curated so far ({} before the first run)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); delete it to curate every document again") from exc


def new_files(sources: list[str], state: dict[str, str]) -> tuple[list[Path], list[Path], dict[str, str]]:
    """(files added or changed since `state` was written, files curated before and unchanged, {path: sha256} of the
    new files as read now: what `remember` records, so a file rewritten during the run is curated again)."""
    new, old, digests = [], [], {}
    for f in document_files(sources, allow_empty=True):
        key, digest = str(f.resolve()), file_digest(f)
        if state.get(key) == digest:
            old.append(f)
        else:
            new.append(f)
            digests[key] = digest
    return new, old, digests


def remember(path: Path, state: dict[str, str], digests: dict[str, str]) -> None:
    """Record the files of `digests` as curated (after publishing, so a failed run curates them again next time)."""
    write_json(path, {**state, **digests})


# --- documents -> items -> the workflow's data files -----------------------------------------------------------


class DocumentItemsResult(StageResult):
    """The items of the documents, written as the workflow's data files, and what was rejected."""

    documents: list[str] = Field(description="The files read.")
    passages: int = Field(description="Passages read (after duplicates).")
    train_questions: int = Field(description="Training questions (cloze or grounded).")
    held_out_questions: int = Field(description="Held-out questions (the target evaluation set).")
    data: dict = Field(description="The workflow recipe's `data` (files under out_dir); {} for sft.")
    sft_rows: str | None = Field(None, description="sft: the SFT rows with quality_score (JSONL).")
    rejects: list[dict] = Field(description="Every paragraph, sentence or item left out, with the reason.")

    def tables(self) -> dict[str, pd.DataFrame]:
        if not self.sft_rows:
            return {}
        rows = [json.loads(x) for x in Path(self.sft_rows).read_text().splitlines()]
        return {"sft_quality": pd.DataFrame([{"quality_score": r["quality_score"], **r["quality"]} for r in rows])}

    def summary(self) -> dict:
        return {"documents": self.documents, "passages": self.passages, "rejected": len(self.rejects)}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def workflow_data(data_type: str, items: CurationItems, work: Path) -> dict:
    """The recipe's `data` for the workflow: files written under `work` from the items.

    dpo, srf, rlvr: the training cloze questions are the prompts (prompt + answer the verifier grades against),
    stage 1 learns their answers and the documents' continuations, the held-out cloze questions are the target set
    and, as multiple choice, the capability benchmark. antihallucination: grounded questions (answer + citation,
    or the abstention) for stages 2-5 and the target set; stage 1 reads the sources and answers without citing."""
    # The capability to retain: the held-out questions as multiple choice (scored by likelihood, so a model has it
    # before training and retention is a ratio; exact-match continuations would be 0 before and after).
    benchmark = {
        "name": "choice",
        "role": "benchmark",
        "format": "choice",
        "path": write_jsonl(work / "choice_eval.jsonl", items.eval_choice),
    }
    if data_type == "antihallucination":
        reader = [{"instruction": i.prompt(), "output": i.answer} for i in items.train_grounded if i.answerable]
        reader += [{"instruction": p, "output": c} for p, c, _ in items.train_continuations]
        target = write_jsonl(work / "grounded_eval.jsonl", [i.record() for i in items.eval_grounded])
        return {
            "source": "files",
            "prompts": write_jsonl(work / "grounded_train.jsonl", [i.record() for i in items.train_grounded]),
            "sft": write_jsonl(work / "sft.jsonl", reader),
            "eval_sets": [{"name": "grounded", "role": "target", "path": target}, benchmark],
        }
    sft = [{"instruction": c.prompt, "output": c.answer} for c in items.train_cloze]
    sft += [{"instruction": p, "output": c} for p, c, _ in items.train_continuations]
    prompts = [{"prompt": c.prompt, "answer": c.answer} for c in items.train_cloze]
    target = write_jsonl(
        work / "cloze_eval.jsonl", [{"prompt": c.prompt, "answer": c.answer} for c in items.eval_cloze]
    )
    return {
        "source": "files",
        "prompts": write_jsonl(work / "prompts.jsonl", prompts),
        "sft": write_jsonl(work / "sft.jsonl", sft),
        "eval_sets": [{"name": "cloze", "role": "target", "path": target}, benchmark],
    }


def sft_rows(items: CurationItems, text_of: dict[str, str]) -> list[dict]:
    """SFT rows (the training passages' cloze answers and continuations), each with its source passage id, its
    quality_score (0-10) and the rubric's parts."""
    pairs = [(c.prompt, c.answer, c.passage_id) for c in items.train_cloze] + items.train_continuations
    rows = []
    for instruction, output, pid in pairs:
        score, parts = quality_score(instruction, output, text_of[pid])
        rows.append(
            {"instruction": instruction, "output": output, "source": pid, "quality_score": score, "quality": parts}
        )
    return rows


@task(name="curate-documents")
def collect_items(data_type: str, files: list[str], cfg: ItemsConfig, out_dir: str) -> DocumentItemsResult:
    """Read the documents, build the data type's items, write them as the workflow's data files under `out_dir`
    (sft: the rows with their quality_score) and the rejects. NothingToCurate when too few questions."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    docs = read_documents(files, max_chars=cfg.max_passage_chars)
    items = build_items(docs.passages, cfg)
    rejects = [{"stage": "documents", **r} for r in docs.rejects] + [{"stage": "items", **r} for r in items.rejects]
    grounded = data_type == "antihallucination"
    train = len(items.train_grounded if grounded else items.train_cloze)
    held = len(items.eval_grounded if grounded else items.eval_cloze)
    write_jsonl(out / "rejects.jsonl", rejects)
    if train < MIN_ITEMS or (data_type != "sft" and held < 1):
        raise NothingToCurate(
            f"{', '.join(files)}: {train} training and {held} held-out questions (needs >= {MIN_ITEMS} and >= 1): "
            "the documents have too few usable sentences (6+ words with a number, a name or a content word); add "
            f"documents, or see {out / 'rejects.jsonl'} for why paragraphs and sentences were left out"
        )
    sft = None
    data = {}
    if data_type == "sft":
        sft = write_jsonl(out / "sft_items.jsonl", sft_rows(items, {p.id: p.text for p in docs.passages}))
    else:
        data = workflow_data(data_type, items, out)
    return DocumentItemsResult(
        stage="0-curate-documents",
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        documents=[str(f) for f in docs.files],
        passages=len(docs.passages),
        train_questions=train,
        held_out_questions=held,
        data=data,
        sft_rows=sft,
        rejects=rejects,
    )


# --- publishing ------------------------------------------------------------------------------------------------


def curated_rows(data_type: str, summary: dict, items: DocumentItemsResult) -> list[dict]:
    """The gated rows of the run, in the data type's row format: the pairs of stage 2 (dpo, srf), the graded
    samples of stage 4 (rlvr), the citation-checked questions of stage 2 (antihallucination), the scored SFT
    items (sft)."""
    if data_type == "sft":
        return [
            {k: r[k] for k in ("instruction", "output", "source", "quality_score")}
            for r in map(json.loads, Path(items.sft_rows).read_text().splitlines())  # type: ignore[arg-type]
        ]
    run = Path(summary["run_dir"])
    fmt = ROW_FORMAT_OF[data_type]
    if data_type == "antihallucination":
        files = sorted(run.glob("02_factuality_data_collection*/grounded.jsonl"))
    else:
        files = [Path(p) for p in summary.get("train_jsonl", []) if _format_of(p) == fmt]
    return [r.to_record() for f in files for r in read_rows(str(f), fmt)]


def _format_of(path: str) -> str | None:
    first = first_record(path)
    return guess_format(first) if first is not None else None


@task(name="curate-publish")
def publish(out_dir: str, rows: list[dict], data_type: str, rejects: list[dict]) -> tuple[int, int]:
    """Append `rows` to OUT/train.jsonl (earlier rows first; a row already there is not repeated but kept in
    rejects.jsonl with that reason) and the rejects to OUT/rejects.jsonl. The new file is read back in its format
    before it replaces the old one, so a row that does not read back publishes nothing. Returns (rows added, rows in
    the file)."""
    out = Path(out_dir)
    path = out / "train.jsonl"
    earlier = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    seen = {json.dumps(r, sort_keys=True) for r in earlier}
    added, repeated = [], []
    for r in rows:
        key = json.dumps(r, sort_keys=True)
        (repeated if key in seen else added).append(r)
        seen.add(key)
    staged = out / f".train.jsonl.{os.getpid()}.staged"
    write_jsonl(staged, earlier + added)
    try:
        list(
            read_rows(str(staged), ROW_FORMAT_OF[data_type])
        )  # DataFormatError (FILE:LINE) if a row does not read back
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    rejects = rejects + [{"stage": "publish", "reason": f"already in {path}", "row": r} for r in repeated]
    old = (out / "rejects.jsonl").read_text() if (out / "rejects.jsonl").is_file() else ""
    with atomic_path(out / "rejects.jsonl", "w") as fh:
        fh.write(old + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    return len(added), len(earlier) + len(added)
