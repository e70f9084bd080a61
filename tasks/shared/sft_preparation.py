"""Stage 1: SFT preparation. The stage-1 model (base, or base + SFT) and its baseline metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, load_data
from realign.eval.grounding import grounded_report
from realign.eval.probes import eval_metrics, perplexity, score_eval_sets
from realign.io import write_json
from realign.model.load import load_model, save_model
from realign.model.tiny import build_tiny_model
from realign.recipes.common import ModelSpec, SFTStageConfig
from realign.score.verify import judge
from realign.train.batches import sft_batches
from realign.train.distributed_job import DistributedConfig
from realign.train.loop import prepare_model, resume_key, train
from realign.train.objectives import sft_loss
from tasks.cache import stage_task
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.stages import SHARED_STAGES, StageResult, one_row


class SFTPrepResult(StageResult):
    """model_dir: the stage-1 model (the reference of later stages); baseline: metric -> value."""

    model_dir: str
    baseline: dict[str, float]
    sft_steps: int
    sft_examples: int
    benchmarks: list[str] = []  # NAME_accuracy of each evaluation set (NAME_score: open), the numbers gate 1 checks

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"sft_baseline": one_row(**self.baseline)}

    def suite_kwargs(self) -> dict[str, dict]:
        # the evaluation sets' accuracies, not the grounded rates beside them (citation accuracy is NaN for a model
        # that answers nothing right: reported as not computed, not a missing benchmark)
        sets = self.benchmarks or [k for k in self.baseline if k.endswith("_accuracy")]
        return {"sft_baseline": {"benchmarks": sets}}


@stage_task("1-sft-preparation", reads=("sft", "eval_sets"))
def prepare_sft(
    model: ModelSpec,
    data: DataConfig,
    sft: SFTStageConfig,
    run_dir: str,
    eval_max_tokens: int = 12,
    verifier: str | None = None,
    distributed: DistributedConfig | None = None,
) -> SFTPrepResult:
    """verifier: judge the baseline's answers with this verifier kind (RLVR) instead of exact match.
    distributed: train SFT on these ranks (mlx.launch); None: the recipe's `distributed` section, read from
    RUN_DIR/recipe.json, else this process. The baseline evaluation always runs here, on the trained model."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SHARED_STAGES.dir(run_dir, 1)
    if model.path == "tiny":
        base = build_tiny_model(out / "base_model", model.tiny, force=True)
        log.info(f"built tiny model {base} ({model.tiny.hidden} hidden, {model.tiny.layers} layers)")
    else:
        base = model.path
    lm = load_model(base)
    bundle = load_data(data)
    steps = 0
    if sft.enabled and bundle.sft:
        cfg = sft.train
        prepare_model(lm.model, cfg)
        log.info(f"SFT: {len(bundle.sft)} examples, {cfg.steps} steps, batch {cfg.batch_size}")

        bar = Progress(SHARED_STAGES.name(1), "SFT step", cfg.steps)

        def progress(row):
            bar.update(row["step"], training_line(row), row)
            if row["step"] % max(1, cfg.steps // 10) == 0 or row["step"] == cfg.steps:
                log.info(f"SFT step {row['step']}/{cfg.steps}: loss {row['loss']:.4f}, {row['tokens_per_s']:.0f} tok/s")

        key = resume_key(repr((str(base), bundle.sft)))  # same base model and data, or start over
        ranks = stage_distributed(run_dir, distributed)
        if ranks is not None:
            # Every rank loads the base model and trains its slice of each global batch; rank 0's weights then come
            # into lm.model (prepared above as on the ranks), and the stage goes on as after training here.
            rows = [{"prompt": p, "completion": c} for p, c in bundle.sft]
            model_src = base if Path(str(base)).exists() else lm.path  # a hub id: the local copy load_model read
            result = train_on_ranks("sft", model_src, rows, cfg, ranks, out / "sft", key=key)
            load_trained(lm.model, out / "sft")
            for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
                bar.update(row["step"], training_line(row), row)
        else:
            batches = sft_batches(lm.tokenizer, bundle.sft, cfg)
            result = train(lm.model, sft_loss, batches, cfg, out_dir=out / "sft", callback=progress, resume_key=key)
        bar.finish(result.steps_done, result.reason)
        if result.resume_warning:
            log.warning(result.resume_warning)
        steps = result.steps_done
    model_dir = save_model(lm.model, lm.path, out / "model")

    scored = score_eval_sets(
        lm.model, lm.tokenizer, bundle.eval_sets, max_tokens=eval_max_tokens, is_correct=judge(verifier)
    )
    baseline = eval_metrics(scored)
    baseline["perplexity"] = perplexity(lm.model, lm.tokenizer, bundle.heldout_text)
    tgt = bundle.target
    if tgt.items is not None:  # grounded questions: the baseline hallucination rate, factuality and calibration
        grounded, _, _ = grounded_report(lm.model, lm.tokenizer, tgt.items, scored[tgt.name].predictions)
        baseline.update({f"{tgt.name}_{k}": v for k, v in grounded.items() if k != "items"})
    write_json(out / "baseline_metrics.json", baseline)
    log.info("baseline: " + ", ".join(f"{k}={v:.4g}" for k, v in baseline.items()))
    return SFTPrepResult(
        stage=SHARED_STAGES.name(1),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        baseline=baseline,
        sft_steps=steps,
        sft_examples=len(bundle.sft),
        benchmarks=[e.metric for e in bundle.eval_sets],
    )
