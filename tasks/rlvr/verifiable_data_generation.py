"""Stage 4 (RLVR): verifiable data generation. N samples per verifiable task from the current model, graded by the
verifier, written as RLVR and GRPO JSONL; coverage = share of tasks with at least one right and one wrong sample,
overall and per category (only those groups carry a GRPO signal)."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import TrainingFile, write_jsonl
from realign.data.formats import write_rows
from realign.eval.verifiability import coverage, read_tasks
from realign.model.generate import generate
from realign.model.load import load_model
from realign.recipes.rlvr import SamplesConfig, VerifierConfig
from realign.score.verify import check_many
from tasks.cache import stage_task
from tasks.progress import Progress
from tasks.rlvr import RLVR_STAGES
from tasks.stages import StageResult, one_row

# An empty completion is a real (wrong) sample; the row formats need non-empty text, so it is written as this.
EMPTY = "(empty completion)"


class VerifiableDataResult(StageResult):
    rlvr_path: str
    grpo_path: str
    verified_sft: TrainingFile | None  # the verified-correct samples as SFT rows (stage 7's control); None: none
    tasks: int
    samples: int
    verified_rate: float  # share of samples the verifier accepted
    coverage: dict[str, float]  # 'all' and per category
    probe: list[tuple[str, str]]  # fixed (prompt, completion) texts for KL from the stage-1 model

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"verifiable_data": one_row(**{f"coverage_{k}": v for k, v in self.coverage.items()})}

    def suite_kwargs(self) -> dict[str, dict]:
        return {"verifiable_data": {"categories": sorted(self.coverage)}}

    def summary(self) -> dict:
        return {
            "examples_processed": self.samples,
            "sampled_verified_rate": [self.verified_rate],
            "coverage": [self.coverage["all"]],
            "train_jsonl": [self.rlvr_path],
        }


@stage_task("4-verifiable-data-generation")
def generate_verifiable_data(
    samples: SamplesConfig, verifier: VerifierConfig, tasks_path: str, model_dir: str, run_dir: str, round: int = 1
) -> VerifiableDataResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = RLVR_STAGES.dir(run_dir, 4, round)
    tasks = read_tasks(tasks_path, samples.max_tasks)
    if not tasks:
        raise ValueError(f"{tasks_path}: no verifiable task to sample (stage 2 found none the verifier can check)")
    gen = samples.generation.model_copy(update={"seed": samples.generation.seed + 1000 * round})
    log.info(
        f"round {round}: sampling {gen.n} answers for {len(tasks)} tasks with {model_dir} (batch {gen.batch_size})"
    )
    lm = load_model(model_dir)

    bar = Progress(RLVR_STAGES.name(4, round), f"round {round} answers generated", len(tasks) * gen.n)

    def progress(done, total):
        bar.update(done)
        if done == total or done % (gen.batch_size * 10) == 0:
            log.info(f"generated {done}/{total} answers")

    outs = generate(lm.model, lm.tokenizer, [t.prompt for t in tasks], gen, on_progress=progress)
    items = [(c.text, t.solution, t.tests) for t, comps in zip(tasks, outs) for c in comps]
    verdicts = check_many(verifier.kind, items)
    for (_, solution, _), v in zip(items, verdicts):
        if isinstance(v, ValueError):  # the data's fault: say which task
            raise ValueError(f"{tasks_path}: the {verifier.kind} verifier cannot judge answers to {solution!r}: {v}")
    correct = [[v.correct for v in verdicts[i * gen.n : (i + 1) * gen.n]] for i in range(len(tasks))]  # type: ignore
    texts = [[c.text for c in comps] for comps in outs]

    rlvr = [
        {
            "problem": t.prompt,
            "solution": t.solution,
            "responses": [{"text": x if x.strip() else EMPTY, "correct": c} for x, c in zip(ts, cs)],
            **({"tests": list(t.tests)} if t.tests else {}),
        }
        for t, ts, cs in zip(tasks, texts, correct)
    ]
    write_rows(out / "rlvr.jsonl", rlvr, "rlvr")
    grpo = [
        {
            "prompt": t.prompt,
            "responses": [{"text": x if x.strip() else EMPTY, "score": float(c)} for x, c in zip(ts, cs)],
        }
        for t, ts, cs in zip(tasks, texts, correct)
    ]
    write_rows(out / "grpo.jsonl", grpo, "grpo")
    verified = [{"instruction": t.prompt, "output": x} for t, ts, cs in zip(tasks, texts, correct)
                for x, c in zip(ts, cs) if c and x.strip()]  # fmt: skip
    verified_sft = None
    if verified:
        write_jsonl(out / "verified_sft.jsonl", verified)
        verified_sft = TrainingFile(path=str(out / "verified_sft.jsonl"), format="sft")
    cov = coverage(tasks, correct)
    n = sum(len(c) for c in correct)
    rate = sum(map(sum, correct)) / n
    log.info(
        f"round {round}: {n} samples, verified rate {rate:.3f}; coverage "
        + ", ".join(f"{k} {v:.3f}" for k, v in cov.items())
    )
    # KL probe: per task (first 64), one verified and one rejected sample where there are both, else the reference
    probe = []
    for t, ts, cs in list(zip(tasks, texts, correct))[:64]:
        right = next((x for x, c in zip(ts, cs) if c and x.strip()), t.solution)
        wrong = next((x for x, c in zip(ts, cs) if not c and x.strip()), None)
        probe += [(t.prompt, right)] + ([(t.prompt, wrong)] if wrong else [])
    return VerifiableDataResult(
        stage=RLVR_STAGES.name(4, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        rlvr_path=str(out / "rlvr.jsonl"),
        grpo_path=str(out / "grpo.jsonl"),
        verified_sft=verified_sft,
        tasks=len(tasks),
        samples=n,
        verified_rate=rate,
        coverage=cov,
        probe=probe,
    )
