"""Stage 3 (anti-hallucination): citation training. SFT of the stage-1 model on the cited answers and abstentions of
stage 2 (with the capability rows the data names), then factuality on held-out answerable questions (SPEC.md:
>= 90%), measured on the dev split: questions about people never trained on."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import GroundedDataConfig, TrainingFile, load_data
from realign.eval.grounding import answer_items, grounded_report
from realign.io import write_json, write_parquet
from realign.model.load import load_model, save_model
from realign.recipes.antihallucination import CitationStageConfig
from realign.train.batches import sft_batches
from realign.train.loop import prepare_model, resume_key, train
from realign.train.objectives import sft_loss
from tasks.antihallucination import AH_STAGES
from tasks.cache import stage_task, weights_digest
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.stages import StageResult, one_row


class CitationTrainingResult(StageResult):
    model_dir: str
    metrics_path: str
    steps: int
    examples: int
    heldout: dict[str, float]  # grounded metrics of the trained model on the dev split

    def tables(self) -> dict[str, pd.DataFrame]:
        h = self.heldout
        return {
            "citation_training": one_row(
                factuality=h["factuality"],
                citation_accuracy=h["citation_accuracy"],
                hallucination_rate=h["hallucination_rate"],
            )
        }

    def summary(self) -> dict:
        return {
            "citation_sft_steps": self.steps,
            "training_metrics": [self.metrics_path],
            "citation_factuality": self.heldout["factuality"],
        }


@stage_task("3-citation-training", reads=("prompts", "sft", "eval_sets"))
def train_citations(
    cfg: CitationStageConfig,
    data: GroundedDataConfig,
    sft_path: str,
    start_dir: str,
    run_dir: str,
    max_tokens: int = 12,
) -> CitationTrainingResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = AH_STAGES.dir(run_dir, 3)
    bundle = load_data(data)
    rows = TrainingFile(path=sft_path, format="sft").examples() + bundle.replay
    random.Random(cfg.train.seed).shuffle(rows)  # interleave the capability rows with the cited answers
    lm = load_model(start_dir)
    prepare_model(lm.model, cfg.train)
    steps = cfg.train.steps
    log.info(f"citation SFT: {len(rows)} rows ({len(bundle.replay)} capability rows), {steps} steps")

    bar = Progress(AH_STAGES.name(3), "citation SFT step", steps)

    def progress(row):
        bar.update(row["step"], training_line(row), row)
        if row["step"] % max(1, steps // 10) == 0 or row["step"] == steps:
            log.info(f"SFT step {row['step']}/{steps}: loss {row['loss']:.4f}, {row['tokens_per_s']:.0f} tok/s")

    key = resume_key(Path(sft_path).read_bytes(), repr(bundle.replay), weights_digest(start_dir))
    ranks = stage_distributed(run_dir)
    if ranks is not None:  # data parallel on the recipe's ranks, from OUT/distributed/; the held-out check stays here
        sft_rows = [{"prompt": p, "completion": c} for p, c in rows]
        result = train_on_ranks("sft", start_dir, sft_rows, cfg.train, ranks, out / "distributed", key=key)
        load_trained(lm.model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], training_line(row), row)
    else:
        result = train(
            lm.model,
            sft_loss,
            sft_batches(lm.tokenizer, rows, cfg.train),
            cfg.train,
            out_dir=out,
            callback=progress,
            resume_key=key,
        )
    bar.finish(result.steps_done, result.reason)
    if result.resume_warning:
        log.warning(result.resume_warning)
    history = pd.DataFrame(result.history)
    history["round"] = 0
    write_parquet(out / "metrics.parquet", history)
    model_dir = save_model(lm.model, start_dir, out / "model")
    items = (bundle.dev or bundle.target).items
    outputs = answer_items(lm.model, lm.tokenizer, items, max_tokens)
    heldout, _, _ = grounded_report(lm.model, lm.tokenizer, items, outputs)
    write_json(out / "heldout.json", {"split": (bundle.dev or bundle.target).name, **heldout})
    log.info(
        f"held-out ({len(items)} questions): factuality {heldout['factuality']:.3f}, citation accuracy "
        f"{heldout['citation_accuracy']:.3f}, hallucination rate {heldout['hallucination_rate']:.3f}"
    )
    return CitationTrainingResult(
        stage=AH_STAGES.name(3),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        metrics_path=str(out / "metrics.parquet"),
        steps=result.steps_done,
        examples=len(rows),
        heldout=heldout,
    )
