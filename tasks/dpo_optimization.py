"""Stage 5: DPO optimization (or RPO / ORPO / CPO / SimPO, by config), with checkpoints and held-out checks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.model.load import load_model, save_model
from realign.recipes.dpo import DPOStageConfig
from realign.train.batches import preference_batches
from realign.train.loop import prepare_model, token_stats, train
from realign.train.objectives import preference_loss
from tasks.common import STAGE_CACHE, stage_dir, write_json


class DPOResult(BaseModel):
    """model_dir: the trained policy (adapters fused). Held-out numbers are on pairs never trained on."""

    model_dir: str
    metrics_path: str
    steps: int
    stopped: str
    reason: str
    kl: float
    entropy: float
    reward_accuracy: float
    reward_margin: float
    train_pairs: int
    val_pairs: int
    tokens: float
    seconds: float


def split_pairs(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return order[n_val:], order[:n_val]


def held_out(model, tokenizer, loss_cfg, train_cfg, pairs, ref, reference=None) -> dict:
    """Implicit-reward accuracy and margin, KL and entropy on held-out pairs, token-weighted over batches."""
    fn = preference_loss(loss_cfg)
    eval_cfg = train_cfg.model_copy(update={"batch_size": min(32, len(pairs)), "seed": 0})
    source = preference_batches(tokenizer, pairs, eval_cfg, ref=ref)
    n_batches = -(-len(pairs) // eval_cfg.batch_size)
    acc = margin = kl = ent = 0.0
    weight = ktoks = 0.0
    for i in range(n_batches):
        batch = source(i)
        _, m = fn(model, batch)
        w = batch["tokens"].shape[0] / 2
        acc += m["rewards/accuracies"].item() * w
        margin += m["rewards/margins"].item() * w
        weight += w
        s = token_stats(model, batch, reference)
        t = batch["mask"].sum().item()
        kl += s["kl"] * t
        ent += s["entropy"] * t
        ktoks += t
    return {"reward_accuracy": acc / weight, "reward_margin": margin / weight, "kl": kl / ktoks, "entropy": ent / ktoks}


@task(name="5-dpo-optimization", cache_policy=STAGE_CACHE, persist_result=True)
def optimize_dpo(cfg: DPOStageConfig, start_dir: str, pairs_path: str, ref_logps_path: str, run_dir: str, round: int = 1) -> DPOResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = stage_dir(run_dir, 5, f"_round{round}" if round > 1 else "")
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    ref_all = pd.read_parquet(ref_logps_path)
    tr_idx, va_idx = split_pairs(len(pairs), cfg.val_fraction, cfg.train.seed)
    train_pairs, val_pairs = [pairs[i] for i in tr_idx], [pairs[i] for i in va_idx]
    ref_tr = {k: ref_all[k].to_numpy()[tr_idx] for k in ("chosen_logps", "rejected_logps")}
    ref_va = {k: ref_all[k].to_numpy()[va_idx] for k in ("chosen_logps", "rejected_logps")}

    lm = load_model(start_dir)
    reference = None if cfg.train.lora is not None else load_model(start_dir).model  # full FT needs a frozen copy for KL
    prepare_model(lm.model, cfg.train)
    rows: list[dict] = []
    steps = cfg.train.steps

    def progress(row):
        rows.append(row)
        if row["step"] % max(1, steps // 10) == 0 or row["step"] == steps:
            log.info(f"round {round} step {row['step']}/{steps}: loss {row['loss']:.4f}, margin {row['rewards/margins']:.3f}, "
                     f"acc {row['rewards/accuracies']:.2f}, KL {row.get('kl', float('nan')):.4f}, {row['tokens_per_s']:.0f} tok/s")

    log.info(f"round {round}: {cfg.loss.method}/{cfg.loss.loss_type} beta={cfg.loss.beta} on {len(train_pairs)} pairs "
             f"({len(val_pairs)} held out), {steps} steps")
    import hashlib

    # Resume from this stage's checkpoints only if they were made from the same start model, pairs and loss.
    key = hashlib.sha256(b"".join([Path(pairs_path).read_bytes(), Path(ref_logps_path).read_bytes(), start_dir.encode(),
                                   cfg.loss.model_dump_json().encode()])).hexdigest()
    result = train(lm.model, preference_loss(cfg.loss), preference_batches(lm.tokenizer, train_pairs, cfg.train, ref=ref_tr),
                   cfg.train, out_dir=out, reference=reference, callback=progress, resume_key=key)
    if result.resumed_from:
        log.info(f"resumed from the checkpoint at step {result.resumed_from}")
    history = pd.DataFrame(result.history)
    history["round"] = round
    history.to_parquet(out / ".metrics.parquet.tmp")
    (out / ".metrics.parquet.tmp").replace(out / "metrics.parquet")
    check = held_out(lm.model, lm.tokenizer, cfg.loss, cfg.train, val_pairs, ref_va, reference) if val_pairs else {
        "reward_accuracy": float("nan"), "reward_margin": float("nan"), "kl": float("nan"), "entropy": float("nan")}
    model_dir = save_model(lm.model, start_dir, out / "model")
    write_json(out / "held_out.json", {**check, "stopped": result.stopped, "reason": result.reason, "steps": result.steps_done})
    log.info(f"round {round} held-out: reward accuracy {check['reward_accuracy']:.3f}, margin {check['reward_margin']:.3f}, "
             f"KL {check['kl']:.4f}" + (f"; stopped early: {result.reason}" if result.reason else ""))
    return DPOResult(model_dir=str(model_dir), metrics_path=str(out / "metrics.parquet"), steps=result.steps_done,
                     stopped=result.stopped, reason=result.reason, kl=check["kl"], entropy=check["entropy"],
                     reward_accuracy=check["reward_accuracy"], reward_margin=check["reward_margin"],
                     train_pairs=len(train_pairs), val_pairs=len(val_pairs),
                     tokens=float(history["tokens"].sum()) if len(history) else 0.0, seconds=time.perf_counter() - t0)
