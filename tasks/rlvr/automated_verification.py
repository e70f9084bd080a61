"""Stage 3 (RLVR): automated verification. On the tasks stage 2 kept, fresh known-wrong answers (another seed than
stage 2's, so the measurement is not the selection) and equivalent rewrites: the verifier's false-positive rate
(SPEC.md: < 5%) and false-negative rate, overall and per kind of probe; the table is published as a Prefect
artifact next to the gate's."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from realign.data.datasets import write_jsonl
from realign.eval.verifiability import ProbeRow, error_rates, probe_verifier, read_tasks
from realign.io import write_json, write_parquet
from realign.recipes.rlvr import VerifierConfig
from tasks.cache import stage_task
from tasks.rlvr import RLVR_STAGES
from tasks.stages import StageResult, one_row


class VerificationResult(StageResult):
    false_positive_rate: float
    false_negative_rate: float
    known_wrong: int
    equivalent: int
    table_path: str

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"verifier": one_row(false_positive_rate=self.false_positive_rate)}

    def summary(self) -> dict:
        return {"false_positive_rate": self.false_positive_rate, "false_negative_rate": self.false_negative_rate}


def probe_table(rows: list[ProbeRow]) -> pd.DataFrame:
    """Per probe kind: how many, how many the verifier passed, and whether passing was right."""
    frame = pd.DataFrame([r.record() for r in rows])
    frame = frame[frame["status"] != "error"].rename(columns={"probe": "probe_kind"})
    table = frame.groupby(["probe_kind", "should_pass"], sort=True).agg(n=("passed", "size"), passed=("passed", "sum"))
    table = table.reset_index()
    table["error_rate"] = (table["passed"] / table["n"]).where(~table["should_pass"], 1 - table["passed"] / table["n"])
    return table


@stage_task("3-automated-verification")
def verify_verifier(verifier: VerifierConfig, tasks_path: str, run_dir: str) -> VerificationResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = RLVR_STAGES.dir(run_dir, 3)
    tasks = read_tasks(tasks_path)
    rows: list[ProbeRow] = probe_verifier(tasks, verifier.kind, verifier.seed + 1)
    rates = error_rates(rows)
    if rates["not_judged"]:
        log.warning(f"{rates['not_judged']} probes could not be judged by the verifier (status error): in neither rate")
    table = probe_table(rows)
    write_parquet(out / "verifier_errors.parquet", table)
    write_json(out / "verifier.json", rates)
    write_jsonl(out / "probe.jsonl", [r.record() for r in rows])
    fooled = [r for r in rows if not r.should_pass and r.passed]
    for r in fooled[:5]:
        log.warning(f"verifier accepted a known-wrong answer ({r.probe}) for task {r.task}: {r.text[:80]!r}")
    log.info(
        f"false positives {rates['false_positive_rate']:.3%} of {rates['known_wrong']} known-wrong answers, "
        f"false negatives {rates['false_negative_rate']:.3%} of {rates['equivalent']} equivalent rewrites, on the "
        f"{len(tasks)} tasks stage 2 kept"
    )
    if flow_run.get_id():
        lines = ["| probe | should pass | n | passed | error rate |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.probe_kind} | {'yes' if r.should_pass else 'no'} | {r.n} | {r.passed} | {r.error_rate:.1%} |"
            for r in table.itertuples()
        ]
        create_markdown_artifact(
            key="verifier-errors",
            markdown=f"**Verifier: false-positive rate {rates['false_positive_rate']:.2%}, false-negative rate "
            f"{rates['false_negative_rate']:.2%}**\n\n" + "\n".join(lines),
            description="RLVR stage 3: the verifier's FP/FN by probe kind",
        )
    return VerificationResult(
        stage=RLVR_STAGES.name(3),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        false_positive_rate=rates["false_positive_rate"],
        false_negative_rate=rates["false_negative_rate"],
        known_wrong=rates["known_wrong"],
        equivalent=rates["equivalent"],
        table_path=str(out / "verifier_errors.parquet"),
    )
