"""Stage 3 (SRF): reward model training. A scalar head on the current model, Bradley-Terry on the training pairs."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json, write_parquet
from realign.model.load import load_model
from realign.recipes.srf import RewardModelStageConfig
from realign.score.reward_model import load_reward_model, save_reward_model
from realign.train.held_out import split_pairs
from realign.train.loop import resume_key
from realign.train.reward import fit_reward_model, reward_model_to_train, score_pairs
from tasks.cache import stage_task
from tasks.progress import Progress
from tasks.shared.distributed import load_trained, stage_distributed, train_on_ranks
from tasks.srf import SRF_STAGES
from tasks.stages import StageResult, one_row

# What a reward pair carries (the scores feed the margin when margin_scale > 0); the pairs table has more columns.
PAIR_FIELDS = ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")


class RewardTrainingResult(StageResult):
    """reward_model_dir: backbone + head + reward_config.json (a `scorer: reward_model`); split_path: which pairs
    were held out for stage 4."""

    reward_model_dir: str
    split_path: str
    metrics_path: str
    train_accuracy: float
    train_margin: float
    train_loss: float
    n_train: int
    n_val: int
    steps: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"reward_model_training": one_row(train_accuracy=self.train_accuracy)}

    def summary(self) -> dict:
        return {"reward_model_steps": self.steps, "reward_model": self.reward_model_dir}


@stage_task("3-reward-model-training")
def train_reward_model(
    cfg: RewardModelStageConfig, model_dir: str, pairs_path: str, run_dir: str, round: int = 1
) -> RewardTrainingResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SRF_STAGES.dir(run_dir, 3, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    tc = cfg.training.train
    train_idx, val_idx = split_pairs(len(pairs), cfg.val_fraction, tc.seed)
    write_json(out / "split.json", {"train": train_idx.tolist(), "val": val_idx.tolist(), "pairs_path": pairs_path})
    train_pairs = [pairs[i] for i in train_idx]
    lm = load_model(model_dir)
    mode = "full fine-tuning" if tc.lora is None else f"LoRA rank {tc.lora.rank}"
    log.info(
        f"round {round}: reward model on {len(train_pairs)} pairs ({len(val_idx)} held out), {tc.steps} steps, {mode}"
    )

    bar = Progress(SRF_STAGES.name(3, round), f"round {round} reward model step", tc.steps)

    def progress(row):
        bar.update(row["step"], f"loss {row['loss']:.4f}, accuracy {row['accuracy']:.3f}", row)
        if row["step"] % max(1, tc.steps // 10) == 0 or row["step"] == tc.steps:
            log.info(
                f"reward model step {row['step']}/{tc.steps}: loss {row['loss']:.4f}, accuracy {row['accuracy']:.3f}, "
                f"margin {row['margin']:.3f}"
            )

    key = resume_key(Path(pairs_path).read_bytes(), model_dir, cfg.model_dump_json())
    ranks = stage_distributed(run_dir)
    if ranks is not None:
        # Data parallel on the ranks (the recipe's `distributed:` section), from OUT/distributed/; rank 0's head and
        # backbone come back into the same module single-process training builds.
        pair_rows = [{k: p[k] for k in p if k in PAIR_FIELDS} for p in train_pairs]
        result = train_on_ranks(
            "reward", model_dir, pair_rows, tc, ranks, out / "distributed", key=key, reward_training=cfg.training
        )
        model = reward_model_to_train(lm.model, cfg.training)
        load_trained(model, out / "distributed")
        for row in result.history:  # the steps' rows to the progress artifact and MLflow (logged as they ran)
            bar.update(row["step"], f"loss {row['loss']:.4f}, accuracy {row['accuracy']:.3f}", row)
    else:
        model, result = fit_reward_model(
            lm.model, lm.tokenizer, train_pairs, cfg.training, out_dir=out, callback=progress, resume_key=key
        )
    if result.resume_warning:
        log.warning(result.resume_warning)
    history = pd.DataFrame(result.history)
    history["round"] = round
    write_parquet(out / "metrics.parquet", history)
    rm_dir = save_reward_model(
        model, model_dir, out / "reward_model", chat=True, max_len=tc.max_seq_len, base=model_dir
    )
    # Accuracy on the whole training split with the final weights, through the saved directory (what later stages load).
    measured = score_pairs(load_reward_model(rm_dir), train_pairs)
    write_json(out / "reward_model_training.json", {**measured, "steps": result.steps_done, "n_val": len(val_idx)})
    log.info(
        f"reward model: train accuracy {measured['accuracy']:.3f}, margin {measured['margin']:.3f}, "
        f"loss {measured['loss']:.4f} on {measured['pairs']} pairs"
    )
    return RewardTrainingResult(
        stage=SRF_STAGES.name(3, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        reward_model_dir=str(rm_dir),
        split_path=str(out / "split.json"),
        metrics_path=str(out / "metrics.parquet"),
        train_accuracy=measured["accuracy"],
        train_margin=measured["margin"],
        train_loss=measured["loss"],
        n_train=len(train_idx),
        n_val=len(val_idx),
        steps=result.steps_done,
    )
