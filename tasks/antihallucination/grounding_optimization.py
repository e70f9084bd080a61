"""Stage 5 (anti-hallucination): preference optimisation (the DPO family) on stage 4's pairs, from the current model;
KL on held-out pairs (SPEC.md: <= 0.1), and factuality and the hallucination rate on held-out questions before and
after, as paired differences with 95% intervals. The gate fails a round whose factuality fell or whose hallucinations
rose beyond noise (the interval's far end past the threshold); a change within noise is reported as such, because a
one-question difference on a hundred is not evidence either way."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import GroundedDataConfig, load_data
from realign.eval.grounding import answer_items, grounded_metrics, judged_flags
from realign.eval.verdict import Comparison, compare
from realign.io import write_json, write_parquet
from realign.model.load import load_model, save_model
from realign.model.logprobs import reference_logps
from realign.recipes.dpo import DPOStageConfig
from realign.train.batches import preference_batches
from realign.train.held_out import held_out, split_with_reference
from realign.train.loop import prepare_model, resume_key, train
from realign.train.objectives import preference_loss
from tasks.antihallucination import AH_STAGES
from tasks.cache import stage_task, weights_digest
from tasks.dpo.dpo_optimization import step_line
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.stages import StageResult, one_row


class GroundingOptimizationResult(StageResult):
    """model_dir: the trained policy; before / after: grounded metrics of the start and trained models on the dev
    split (questions about people never trained on)."""

    model_dir: str
    metrics_path: str
    steps: int
    reason: str  # why training stopped early or did not run ('' when it ran all its steps)
    kl: float
    reward_accuracy: float
    train_pairs: int
    before: dict[str, float]
    after: dict[str, float]
    factuality: Comparison  # after - before on the held-out answerable questions
    hallucination: Comparison  # after - before on all held-out questions

    def tables(self) -> dict[str, pd.DataFrame]:
        f, h = self.factuality, self.hallucination
        return {
            "grounding_optimization": one_row(
                kl=self.kl,
                factuality_gain=f.difference,
                factuality_gain_ci_high=f.ci_high if f.measured else math.nan,  # not measured: the gate says so
                hallucination_change=h.difference,
                hallucination_change_ci_low=h.ci_low if h.measured else math.nan,
            )
        }

    def summary(self) -> dict:
        return {
            "training_steps": self.steps,
            "training_metrics": [self.metrics_path] if self.steps else [],
            "heldout_factuality_before": [self.before["factuality"]],
            "heldout_factuality_after": [self.after["factuality"]],
        }


@stage_task("5-grounding-optimization", reads=("eval_sets",))
def optimize_grounding(
    cfg: DPOStageConfig,
    data: GroundedDataConfig,
    pairs_path: str,
    start_dir: str,
    run_dir: str,
    round: int = 1,
    max_tokens: int = 12,
) -> GroundingOptimizationResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = AH_STAGES.dir(run_dir, 5, round)
    with open(pairs_path, encoding="utf-8") as fh:
        pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in map(json.loads, fh) if r]
    bundle = load_data(data)
    split = bundle.dev or bundle.target
    lm = load_model(start_dir)
    before_out = answer_items(lm.model, lm.tokenizer, split.items, max_tokens)
    before = grounded_metrics(split.items, before_out)
    if len(pairs) < 2:
        # Nothing to learn from: the model's samples held no hallucination to prefer against.
        reason = f"{len(pairs)} preference pairs: nothing to optimise, the stage-4 model is kept"
        log.warning(reason)
        f, h = _changes(split.items, before_out, before_out)
        write_json(out / "held_out.json", {"before": before, "after": before, "reason": reason})
        return GroundingOptimizationResult(
            stage=AH_STAGES.name(5, round),
            out_dir=str(out),
            seconds=time.perf_counter() - t0,
            model_dir=start_dir,
            metrics_path="",
            steps=0,
            reason=reason,
            kl=0.0,
            reward_accuracy=math.nan,
            train_pairs=0,
            before=before,
            after=before,
            factuality=f,
            hallucination=h,
        )

    # cut as training cuts them: the reference scores the tokens the policy sees
    ref_all = reference_logps(lm.model, lm.tokenizer, pairs, max_len=cfg.train.max_seq_len)
    train_pairs, val_pairs, ref_tr, ref_va = split_with_reference(pairs, ref_all, cfg.val_fraction, cfg.train.seed)
    reference = None if cfg.train.lora is not None else load_model(start_dir).model  # full FT: a frozen copy for KL
    prepare_model(lm.model, cfg.train)
    steps = cfg.train.steps

    bar = Progress(AH_STAGES.name(5, round), f"round {round} optimisation step", steps)

    def progress(row):
        bar.update(row["step"], training_line(row), row)
        if row["step"] % max(1, steps // 10) == 0 or row["step"] == steps:
            log.info(f"round {round} " + step_line(row, steps))

    log.info(
        f"round {round}: {cfg.loss.method}/{cfg.loss.loss_type} beta={cfg.loss.beta} on {len(train_pairs)} pairs "
        f"({len(val_pairs)} held out), {steps} steps"
    )
    key = resume_key(Path(pairs_path).read_bytes(), weights_digest(start_dir), cfg.loss.model_dump_json())
    ranks = stage_distributed(run_dir)
    if ranks is not None:
        # Data parallel on the recipe's ranks, from OUT/distributed/, as the DPO workflow's stage 5 (each rank scores
        # the training pairs' reference log-probs with the start model; with full fine-tuning no per-step KL there);
        # the held-out check and the grounded metrics below run here.
        rows = [{k: str(p[k]) for k in ("prompt", "chosen", "rejected")} for p in train_pairs]
        result = train_on_ranks(
            "preference", start_dir, rows, cfg.train, ranks, out / "distributed", loss=cfg.loss, key=key
        )
        load_trained(lm.model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], training_line(row), row)
    else:
        result = train(
            lm.model,
            preference_loss(cfg.loss),
            preference_batches(lm.tokenizer, train_pairs, cfg.train, ref=ref_tr),
            cfg.train,
            out_dir=out,
            reference=reference,
            callback=progress,
            resume_key=key,
        )
    bar.finish(result.steps_done, result.reason)
    if result.resume_warning:
        log.warning(result.resume_warning)
    history = pd.DataFrame(result.history)
    history["round"] = round
    write_parquet(out / "metrics.parquet", history)
    check = held_out(lm.model, lm.tokenizer, cfg.loss, cfg.train, val_pairs, ref_va, reference)
    after_out = answer_items(lm.model, lm.tokenizer, split.items, max_tokens)
    after = grounded_metrics(split.items, after_out)
    f, h = _changes(split.items, after_out, before_out)
    model_dir = save_model(lm.model, start_dir, out / "model")
    write_json(
        out / "held_out.json",
        {
            **check,
            "before": before,
            "after": after,
            "comparisons": [c.describe() for c in (f, h)],
            "stopped": result.stopped,
            "reason": result.reason,
        },
    )
    log.info(
        f"round {round} held-out: KL {check['kl']:.4f}, reward accuracy {check['reward_accuracy']:.3f}"
        + (f"; stopped early: {result.reason}" if result.reason else "")
    )
    for c in (f, h):
        log.info(f"round {round} {c.describe()}")
    return GroundingOptimizationResult(
        stage=AH_STAGES.name(5, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        metrics_path=str(out / "metrics.parquet"),
        steps=result.steps_done,
        reason=result.reason,
        kl=check["kl"],
        reward_accuracy=check["reward_accuracy"],
        train_pairs=len(train_pairs),
        before=before,
        after=after,
        factuality=f,
        hallucination=h,
    )


def _changes(items, after: list[str], before: list[str]) -> tuple[Comparison, Comparison]:
    """after - before on factuality (answerable questions) and hallucination rate (all), paired, with intervals."""
    fa, fb = judged_flags(items, after), judged_flags(items, before)
    keep = [i.answerable for i in items]
    factuality = compare(
        "factuality",
        "after",
        [c for c, k in zip(fa["correct"], keep) if k],
        "before",
        [c for c, k in zip(fb["correct"], keep) if k],
    )
    return factuality, compare("hallucination_rate", "after", fa["hallucinated"], "before", fb["hallucinated"])
