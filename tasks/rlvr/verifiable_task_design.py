"""Stage 2 (RLVR): verifiable task design. Each task's reference must pass its verifier and every known-wrong answer
made for it must fail; verifiability = share of tasks for which both hold (SPEC.md: >= 80%)."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, load_data, write_jsonl
from realign.eval.verifiability import (
    embedded_categories,
    probe_verifier,
    task_verifiable,
    tasks_from_data,
    write_tasks,
)
from realign.io import write_json
from realign.recipes.rlvr import VerifierConfig
from tasks.cache import stage_task
from tasks.rlvr import RLVR_STAGES
from tasks.stages import StageResult, one_row


class TaskDesignResult(StageResult):
    tasks_path: str  # tasks.jsonl: prompt, solution, category, tests, verifiable
    probe_path: str  # probe.jsonl: every reference, known-wrong answer and rewrite judged
    tasks: int
    verifiable: int
    verifiability: float
    by_category: dict[str, float]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"verifiable_tasks": one_row(verifiability=self.verifiability)}

    def summary(self) -> dict:
        return {"tasks": self.tasks, "verifiability": self.verifiability}


@stage_task("2-verifiable-task-design", reads=("prompts",))
def design_tasks(verifier: VerifierConfig, data: DataConfig, run_dir: str) -> TaskDesignResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = RLVR_STAGES.dir(run_dir, 2)
    bundle = load_data(data)
    categories = embedded_categories(bundle.prompts) if data.source == "embedded" else None
    tasks = tasks_from_data(bundle.prompts, bundle.answers, categories)
    log.info(f"probing the {verifier.kind} verifier on {len(tasks)} tasks (reference, known-wrong answers, rewrites)")
    rows = probe_verifier(tasks, verifier.kind, verifier.seed)
    ok = task_verifiable(rows, len(tasks))
    write_tasks(out / "tasks.jsonl", tasks, ok)
    write_jsonl(out / "probe.jsonl", [r.record() for r in rows])
    by_category: dict[str, list[bool]] = {}
    for t, v in zip(tasks, ok, strict=True):
        by_category.setdefault(t.category, []).append(v)
    shares = {k: sum(v) / len(v) for k, v in by_category.items()}
    verifiability = sum(ok) / len(ok) if ok else float("nan")
    write_json(out / "verifiability.json", {"verifiability": verifiability, "by_category": shares})
    log.info(
        f"verifiability {verifiability:.3f} ({sum(ok)} of {len(ok)} tasks); "
        + ", ".join(f"{k} {v:.3f}" for k, v in shares.items())
    )
    return TaskDesignResult(
        stage=RLVR_STAGES.name(2),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        tasks_path=str(out / "tasks.jsonl"),
        probe_path=str(out / "probe.jsonl"),
        tasks=len(tasks),
        verifiable=sum(ok),
        verifiability=verifiability,
        by_category=shares,
    )
