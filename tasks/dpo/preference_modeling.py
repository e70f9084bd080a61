"""Stage 4 (DPO): preference modeling. Is the preference signal learnable? A reward model's held-out accuracy says."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json
from realign.model.load import load_model
from realign.recipes.dpo import RewardModelStageConfig
from realign.score.reward_model import RewardModel
from tasks.cache import stage_task
from tasks.dpo import DPO_STAGES
from tasks.stages import StageResult, one_row


class RewardModelResult(StageResult):
    head_path: str
    accuracy: float  # held-out
    train_accuracy: float
    train_val_gap: float
    n_train: int
    n_val: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"reward_model": one_row(accuracy=self.accuracy)}


@stage_task("4-preference-modeling")
def model_preferences(
    cfg: RewardModelStageConfig, model_dir: str, pairs_path: str, run_dir: str, seed: int = 0, round: int = 1
) -> RewardModelResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = DPO_STAGES.dir(run_dir, 4, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    lm = load_model(model_dir)
    rm = RewardModel(lm.model, lm.tokenizer, pooling=cfg.pooling)
    fit = rm.fit(pairs, val_fraction=cfg.val_fraction, steps=cfg.steps, learning_rate=cfg.learning_rate, seed=seed)
    head = rm.save(out / "reward_head.json")
    metrics = {
        "accuracy": fit.val_accuracy,
        "train_accuracy": fit.train_accuracy,
        "train_val_gap": fit.train_val_gap,
        "n_train": fit.n_train,
        "n_val": fit.n_val,
        "final_loss": fit.losses[-1] if fit.losses else None,
    }
    write_json(out / "reward_model.json", metrics)
    log.info(
        f"reward model: held-out accuracy {fit.val_accuracy:.3f} on {fit.n_val} pairs (train {fit.train_accuracy:.3f})"
    )
    return RewardModelResult(
        stage=DPO_STAGES.name(4, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        head_path=str(head),
        accuracy=fit.val_accuracy,
        train_accuracy=fit.train_accuracy,
        train_val_gap=fit.train_val_gap,
        n_train=fit.n_train,
        n_val=fit.n_val,
    )
