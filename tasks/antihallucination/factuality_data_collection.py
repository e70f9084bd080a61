"""Stage 2 (anti-hallucination): factuality data collection. Grounded questions from passages, answerable and
unanswerable, with every citation checked against the passage it names; citation accuracy = share of answerable
questions whose cited passages all state the answer (SPEC.md: >= 85%). Questions whose citations fail are kept apart
with the reason, not trained on."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import GroundedDataConfig, TrainingFile, load_data, write_jsonl
from realign.data.grounded import abstention_text, citation_problem
from realign.io import write_json
from tasks.antihallucination import AH_STAGES
from tasks.cache import stage_task
from tasks.stages import StageResult, one_row


class FactualityDataResult(StageResult):
    items_path: str  # grounded.jsonl: the questions later stages train on (citations checked)
    sft_path: str  # cited_sft.jsonl: prompt -> cited answer or abstention, stage 3's training rows
    rejected_path: str  # rejected.jsonl: questions whose citations failed, with the reason
    citation_accuracy: float
    answerable: int
    unanswerable: int
    kept: int
    rejected: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "factuality_data": one_row(
                citation_accuracy=self.citation_accuracy, answerable=self.answerable, unanswerable=self.unanswerable
            )
        }

    def summary(self) -> dict:
        return {"grounded_questions": self.kept, "data_citation_accuracy": self.citation_accuracy}


@stage_task("2-factuality-data-collection", reads=("prompts",))
def collect_factuality_data(data: GroundedDataConfig, run_dir: str) -> FactualityDataResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = AH_STAGES.dir(run_dir, 2)
    items = load_data(data).grounded
    problems = [citation_problem(i) for i in items]
    answerable = [p for i, p in zip(items, problems) if i.answerable]
    accuracy = sum(p is None for p in answerable) / len(answerable) if answerable else float("nan")
    kept = [i for i, p in zip(items, problems) if p is None]
    rejected = [{**i.record(), "reason": p} for i, p in zip(items, problems) if p is not None]
    write_jsonl(out / "grounded.jsonl", [i.record() for i in kept])
    write_jsonl(out / "cited_sft.jsonl", [{"instruction": i.prompt(), "output": i.target()} for i in kept])
    write_jsonl(out / "rejected.jsonl", rejected)
    n_ans = len(answerable)
    # Where the citations come from: only citations the data names can fail the check; the embedded world's and
    # those derived from the passages that state the answer hold by construction.
    if data.source == "files":
        with abstention_text(data.abstention):
            named = sum(1 for r in TrainingFile(path=data.prompts, format="grounded").records() if r.get("citations"))
        provenance = f"{named} rows name their citations; the others cite the passages that state their answer"
    else:
        provenance = "built with the questions (embedded world): correct by construction"
    stats = {
        "citation_accuracy": accuracy,
        "questions": len(items),
        "answerable": n_ans,
        "unanswerable": len(items) - n_ans,
        "kept": len(kept),
        "rejected": len(rejected),
        "citations": provenance,
    }
    write_json(out / "factuality_data.json", stats)
    log.info(
        f"{len(items)} grounded questions ({n_ans} answerable, {len(items) - n_ans} unanswerable); citation accuracy "
        f"{accuracy:.3f} (citations {provenance}); {len(rejected)} set apart with the reason in rejected.jsonl"
    )
    return FactualityDataResult(
        stage=AH_STAGES.name(2),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        items_path=str(out / "grounded.jsonl"),
        sft_path=str(out / "cited_sft.jsonl"),
        rejected_path=str(out / "rejected.jsonl"),
        citation_accuracy=accuracy,
        answerable=n_ans,
        unanswerable=len(items) - n_ans,
        kept=len(kept),
        rejected=len(rejected),
    )
