"""Stage 1: the model with the behaviour (the embedded demo trains it in; your model has it) and its baseline."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json
from realign.model.load import load_model, save_model
from realign.model.tiny import build_tiny_model
from realign.recipes.abliterate import BehaviourDataConfig, BehaviourSFTConfig
from realign.recipes.common import ModelSpec
from realign.steer.behaviour import load_behaviour
from realign.steer.measure import measure
from realign.train.batches import sft_batches
from realign.train.loop import prepare_model, resume_key, train
from realign.train.objectives import sft_loss
from tasks.abliterate import ABLITERATE
from tasks.cache import stage_task
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.stages import StageResult, one_row


class BehaviourModelResult(StageResult):
    """model_dir: the stage-1 model; baseline: behaviour_rate and NAME_accuracy per benchmark."""

    model_dir: str
    baseline: dict[str, float]
    sft_steps: int
    sft_examples: int
    limits: dict

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"behaviour_baseline": one_row(**self.baseline)}

    def suite_kwargs(self) -> dict[str, dict]:
        benchmarks = [k for k in self.baseline if k.endswith("_accuracy")]
        return {"behaviour_baseline": {"limits": self.limits, "benchmarks": benchmarks}}

    def summary(self) -> dict:
        return {"examples_processed": self.sft_steps and self.sft_examples, "sft_steps": self.sft_steps}


@stage_task("1-sft-preparation")
def prepare_behaviour_model(
    model: ModelSpec,
    data: BehaviourDataConfig,
    sft: BehaviourSFTConfig,
    run_dir: str,
    files: list[str],
    limits: dict,
    max_tokens: int = 12,
) -> BehaviourModelResult:
    """files: the data files (their contents key the cache); limits: the steering thresholds, for the gate."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = ABLITERATE.dir(run_dir, 1)
    base = build_tiny_model(out / "base_model", model.tiny, force=True) if model.path == "tiny" else model.path
    lm = load_model(base)
    sets = load_behaviour(data)
    steps = 0
    if sft.enabled and sets.sft:
        cfg = sft.train
        prepare_model(lm.model, cfg)
        log.info(f"SFT: {len(sets.sft)} rows (the behaviour and the skills), {cfg.steps} steps, batch {cfg.batch_size}")
        bar = Progress(ABLITERATE.name(1), "SFT step", cfg.steps)

        def progress(row):
            bar.update(row["step"], training_line(row), row)
            if row["step"] % max(1, cfg.steps // 5) == 0 or row["step"] == cfg.steps:
                log.info(f"SFT step {row['step']}/{cfg.steps}: loss {row['loss']:.4f}")

        key = resume_key(repr((str(base), sets.sft)))
        ranks = stage_distributed(run_dir)
        if ranks is not None:  # data parallel on the recipe's ranks, from OUT/sft/ as single-process training
            rows = [{"prompt": p, "completion": c} for p, c in sets.sft]
            model_src = base if Path(str(base)).exists() else lm.path  # a hub id: the local copy load_model read
            result = train_on_ranks("sft", model_src, rows, cfg, ranks, out / "sft", key=key)
            load_trained(lm.model, out / "sft")
            for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
                bar.update(row["step"], training_line(row), row)
        else:
            result = train(
                lm.model,
                sft_loss,
                sft_batches(lm.tokenizer, sets.sft, cfg),
                cfg,
                out_dir=out / "sft",
                callback=progress,
                resume_key=key,
                measure=None,
            )
        bar.finish(result.steps_done, result.reason)
        steps = result.steps_done
    model_dir = save_model(lm.model, lm.path, out / "model", fuse=True)
    lm = load_model(model_dir)  # measured as later stages read it: from disk
    m = measure(lm.model, lm.tokenizer, sets, data.behaviour_prefixes, max_tokens=max_tokens)
    baseline = {"behaviour_rate": m.behaviour_rate, **m.accuracies()}
    write_json(out / "baseline_metrics.json", baseline)
    log.info("baseline: " + ", ".join(f"{k}={v:.4g}" for k, v in baseline.items()))
    return BehaviourModelResult(
        stage=ABLITERATE.name(1),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        baseline=baseline,
        sft_steps=steps,
        sft_examples=len(sets.sft),
        limits=limits,
    )
