"""Stage 5 (DPO): preference optimization (DPO, or RPO / ORPO / CPO / SimPO by config), checkpoints, held-out checks."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json, write_parquet
from realign.model.load import load_model, save_model
from realign.recipes.dpo import DPOStageConfig
from realign.train.batches import preference_batches
from realign.train.distributed_job import DistributedConfig
from realign.train.held_out import held_out, split_with_reference
from realign.train.loop import prepare_model, resume_key, train
from realign.train.objectives import preference_loss
from tasks.cache import file_digest, stage_task
from tasks.dpo import DPO_STAGES
from tasks.progress import Progress, training_line
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.stages import StageResult, one_row


class DPOResult(StageResult):
    """model_dir: the trained policy (adapters fused). Held-out numbers are on pairs never trained on."""

    model_dir: str
    metrics_path: str
    steps: int
    stopped: str
    reason: str  # why training stopped early ('' when it ran all its steps)
    kl: float
    entropy: float
    reward_accuracy: float
    reward_margin: float
    train_pairs: int
    val_pairs: int
    tokens: float

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "dpo_optimization": one_row(
                kl=self.kl, reward_accuracy=self.reward_accuracy, reward_margin=self.reward_margin
            )
        }

    def summary(self) -> dict:
        return {"training_steps": self.steps, "training_metrics": [self.metrics_path]}


def step_line(row: dict, steps: int) -> str:
    """One training log line; KL and entropy only on the steps where they were measured."""
    kl = row.get("kl", math.nan)
    measured = f", KL {kl:.4f}, entropy {row['entropy']:.3f}" if not math.isnan(kl) else ""
    return (
        f"step {row['step']}/{steps}: loss {row['loss']:.4f}, margin {row['rewards/margins']:.3f}, "
        f"acc {row['rewards/accuracies']:.2f}{measured}, {row['tokens_per_s']:.0f} tok/s"
    )


@stage_task("5-dpo-optimization")
def optimize_dpo(
    cfg: DPOStageConfig,
    start_dir: str,
    pairs_path: str,
    ref_logps_path: str,
    run_dir: str,
    round: int = 1,
    distributed: DistributedConfig | None = None,
) -> DPOResult:
    """distributed: train on these ranks (mlx.launch); None: the recipe's `distributed` section, read from
    RUN_DIR/recipe.json, else this process. The held-out check always runs here, after training."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = DPO_STAGES.dir(run_dir, 5, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    ref_all = {k: v.to_numpy() for k, v in pd.read_parquet(ref_logps_path).items()}
    train_pairs, val_pairs, ref_tr, ref_va = split_with_reference(pairs, ref_all, cfg.val_fraction, cfg.train.seed)

    lm = load_model(start_dir)
    reference = (
        None if cfg.train.lora is not None else load_model(start_dir).model
    )  # full FT needs a frozen copy for KL
    prepare_model(lm.model, cfg.train)
    steps = cfg.train.steps

    bar = Progress(DPO_STAGES.name(5, round), f"round {round} DPO step", steps)

    def progress(row):
        bar.update(row["step"], training_line(row), row)
        if row["step"] % max(1, steps // 10) == 0 or row["step"] == steps:
            log.info(f"round {round} " + step_line(row, steps))

    log.info(
        f"round {round}: {cfg.loss.method}/{cfg.loss.loss_type} beta={cfg.loss.beta} on {len(train_pairs)} pairs "
        f"({len(val_pairs)} held out), {steps} steps"
    )
    # Resume from this stage's checkpoints only if they were made from the same start model, pairs and loss.
    key = resume_key(Path(pairs_path).read_bytes(), file_digest(ref_logps_path), start_dir, cfg.loss.model_dump_json())
    ranks = stage_distributed(run_dir, distributed)
    if ranks is not None:
        # Data parallel on the ranks, from OUT/distributed/ (job, pairs, checkpoints, rank 0's weights). Each rank
        # scores the training pairs' reference log-probs with the start model itself (the job carries no stage-3
        # cache). The ranks hold no frozen reference copy: with full fine-tuning their per-step KL is NaN and
        # kl_limit cannot stop them; the held-out check below (KL, reward accuracy) runs here, single-process.
        if cfg.train.kl_limit is not None and cfg.train.lora is None:
            log.warning("distributed full fine-tuning measures no per-step KL: kl_limit is not applied on the ranks")
        rows = [
            {"prompt": str(p["prompt"]), "chosen": str(p["chosen"]), "rejected": str(p["rejected"])}
            for p in train_pairs
        ]
        result = train_on_ranks(
            "preference", start_dir, rows, cfg.train, ranks, out / "distributed", loss=cfg.loss, key=key
        )
        load_trained(lm.model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], training_line(row), row)
    else:
        batches = preference_batches(lm.tokenizer, train_pairs, cfg.train, ref=ref_tr)
        result = train(
            lm.model,
            preference_loss(cfg.loss),
            batches,
            cfg.train,
            out_dir=out,
            reference=reference,
            callback=progress,
            resume_key=key,
        )
    bar.finish(result.steps_done, result.reason)
    if result.resume_warning:
        log.warning(result.resume_warning)
    if result.resumed_from:
        log.info(f"resumed from the checkpoint at step {result.resumed_from}")
    history = pd.DataFrame(result.history)
    history["round"] = round
    write_parquet(out / "metrics.parquet", history)
    check = held_out(lm.model, lm.tokenizer, cfg.loss, cfg.train, val_pairs, ref_va, reference)
    model_dir = save_model(lm.model, start_dir, out / "model")
    write_json(
        out / "held_out.json", {**check, "stopped": result.stopped, "reason": result.reason, "steps": result.steps_done}
    )
    log.info(
        f"round {round} held-out: reward accuracy {check['reward_accuracy']:.3f}, margin {check['reward_margin']:.3f}, "
        f"KL {check['kl']:.4f}" + (f"; stopped early: {result.reason}" if result.reason else "")
    )
    return DPOResult(
        stage=DPO_STAGES.name(5, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(model_dir),
        metrics_path=str(out / "metrics.parquet"),
        steps=result.steps_done,
        stopped=result.stopped,
        reason=result.reason,
        kl=check["kl"],
        entropy=check["entropy"],
        reward_accuracy=check["reward_accuracy"],
        reward_margin=check["reward_margin"],
        train_pairs=len(train_pairs),
        val_pairs=len(val_pairs),
        tokens=float(history["tokens"].sum()) if len(history) else 0.0,
    )
