"""Losses as (model, batch) -> (loss, metrics): SFT, and the preference family (DPO, RPO, ORPO, CPO/SimPO).

The formulas are in losses.py (TRL's); these wrap them around a forward pass over a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import mlx.core as mx
import mlx.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from realign.model.logprobs import TokenBatch, forward_logps
from realign.train.batches import NLL_WEIGHT, POLICY_LOGITS, Batch
from realign.train.losses import cpo_loss, dpo_loss, nll_loss, orpo_loss


def sft_loss(model: nn.Module, batch: Batch) -> tuple[mx.array, dict[str, mx.array]]:
    """Mean completion-token NLL (prompt and padding masked)."""
    lp, logits = forward_logps(model, _tb(batch))
    loss = nll_loss(lp, batch["mask"])
    return loss, {"loss": loss, POLICY_LOGITS: mx.stop_gradient(logits)}


class PreferenceLossConfig(BaseModel):
    """Which preference objective and its coefficients (TRL names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["dpo", "orpo", "cpo"] = Field(
        "dpo", description="dpo (with a reference), orpo or cpo (reference-free)."
    )
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "simpo"] = Field(
        "sigmoid", description="dpo: sigmoid|hinge|ipo|robust; cpo: sigmoid|simpo."
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="Inverse temperature of the implicit reward (ORPO: weight of the odds-ratio term).",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Probability a preference label is flipped (cDPO / robust)."
    )
    rpo_alpha: float | None = Field(None, ge=0.0, description="RPO: add this times the chosen NLL to the DPO loss.")
    cpo_alpha: float = Field(1.0, ge=0.0, description="CPO: weight of the chosen NLL (0 for pure SimPO).")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO target reward margin.")

    def averaged(self) -> bool:
        """Whether log-probs are length-averaged (IPO, ORPO, SimPO) rather than summed."""
        return self.loss_type in ("ipo", "simpo") or self.method == "orpo"


def preference_loss(cfg: PreferenceLossConfig) -> Callable[[nn.Module, Batch], tuple[mx.array, dict]]:
    """A loss over batches of B pairs: rows [0, B) chosen, [B, 2B) rejected.

    DPO needs "ref_chosen" and "ref_rejected" (summed reference log-probs, [B]).
    Metrics use TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies,
    rewards/margins, logps/chosen, logps/rejected (sums), nll.
    IPO's loss is on length-averaged log-ratios, but its rewards (and so margins and accuracies) are
    beta * (summed policy - summed reference) log-probs, as TRL 1.16 logs them; ORPO's and CPO's are
    beta * their (averaged for ORPO/SimPO) policy log-probs, as in TRL.
    The NLL is the mean over the chosen completion tokens (prompt and padding masked) for RPO, CPO and ORPO alike;
    TRL's ORPO takes it over prompt + completion (kept: docs/PARITY.md).
    """

    def loss_fn(model: nn.Module, batch: Batch):
        lp, logits = forward_logps(model, _tb(batch))
        mask = batch["mask"]
        sums, counts = (lp * mask).sum(axis=1), mx.maximum(mask.sum(axis=1), 1)
        B = sums.shape[0] // 2
        pc, pr = sums[:B], sums[B:]
        nc, nr = counts[:B], counts[B:]
        # A data-parallel slice's token mean, rescaled so that the ranks' example-weighted sum is the global batch's
        # token mean (realign.train.distributed.DataParallel.mine); absent in one process.
        chosen_nll = nll_loss(lp[:B], mask[:B]) * batch.get(NLL_WEIGHT, 1.0)
        if cfg.averaged():
            pc_in, pr_in = pc / nc, pr / nr
        else:
            pc_in, pr_in = pc, pr
        if cfg.method == "dpo":
            rc, rr = batch["ref_chosen"], batch["ref_rejected"]
            losses, cr, rjr = dpo_loss(
                pc_in,
                pr_in,
                rc / nc if cfg.averaged() else rc,
                rr / nr if cfg.averaged() else rr,
                beta=cfg.beta,
                loss_type=cfg.loss_type,  # type: ignore[arg-type]
                label_smoothing=cfg.label_smoothing,
            )
            if cfg.averaged():
                # IPO: loss on averaged log-ratios, rewards on summed ones (TRL's rewards/* for every loss type).
                cr = mx.stop_gradient(cfg.beta * (pc - rc))
                rjr = mx.stop_gradient(cfg.beta * (pr - rr))
            loss = losses.mean() + (cfg.rpo_alpha * chosen_nll if cfg.rpo_alpha else 0.0)
        elif cfg.method == "orpo":
            losses, cr, rjr, _ = orpo_loss(pc_in, pr_in, beta=cfg.beta)
            # Completion-only NLL (TRL's ORPO: prompt + completion); kept, see orpo_loss and docs/PARITY.md.
            loss = chosen_nll + losses.mean()
        else:
            losses, cr, rjr = cpo_loss(
                pc_in,
                pr_in,
                beta=cfg.beta,
                loss_type=cfg.loss_type,  # type: ignore[arg-type]
                label_smoothing=cfg.label_smoothing,
                simpo_gamma=cfg.simpo_gamma,
            )
            loss = losses.mean() + cfg.cpo_alpha * chosen_nll
        metrics = {
            "loss": loss,
            "rewards/chosen": cr.mean(),
            "rewards/rejected": rjr.mean(),
            "rewards/accuracies": (cr > rjr).astype(mx.float32).mean(),
            "rewards/margins": (cr - rjr).mean(),
            "logps/chosen": mx.stop_gradient(pc).mean(),
            "logps/rejected": mx.stop_gradient(pr).mean(),
            "nll": mx.stop_gradient(chosen_nll),
            POLICY_LOGITS: mx.stop_gradient(logits),
        }
        return loss, metrics

    if cfg.method == "dpo" and cfg.loss_type == "simpo":
        raise ValueError("loss_type 'simpo' belongs to method 'cpo'")
    if cfg.method == "cpo" and cfg.loss_type not in ("sigmoid", "simpo"):
        raise ValueError(f"method 'cpo' supports loss_type sigmoid or simpo, not '{cfg.loss_type}'")
    return loss_fn


def _tb(batch: Batch) -> TokenBatch:
    return TokenBatch(batch["tokens"], batch["mask"])
