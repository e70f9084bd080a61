"""On-policy RL for language models on MLX: GRPO (with its loss variants) and RLOO, TRL's formulas and names.

One step: a batch of prompts -> `num_generations` sampled completions each (batched generation) -> rewards from
any scorer -> advantages (group-normalised for GRPO, leave-one-out for RLOO) -> `num_iterations` clipped
policy-gradient updates against the log-probs the samples were drawn with, under a frozen reference.
Its own loop (not flags on the SFT/DPO loop): the batch is made by the policy itself, every step.

Formulas follow TRL 1.16 (`GRPOTrainer._compute_loss`, `RLOOTrainer`); differences are named where they occur.
References: GRPO (Shao et al. 2024), DAPO (Yu et al. 2025), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map
from pydantic import BaseModel, ConfigDict, Field, model_validator

from realign.eval.metrics import token_entropy
from realign.model.generate import GenerationConfig, generate, prompt_tokens
from realign.model.logprobs import Encoded, _pad_id, collate, token_logps_from_logits
from realign.train.batches import batch_indices
from realign.train.distributed import DataParallel, gather_ragged, split_counts, sum_tree, sync_start
from realign.train.loop import (
    TrainConfig,
    TrainResult,
    adapters_disabled,
    has_adapters,
    make_optimizer,
    resume_checkpoint,
    save_checkpoint,
)

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ADV_EPS = 1e-4  # TRL's: (r - mean) / (std + 1e-4)

# --- advantages -------------------------------------------------------------------------


def _grouped(rewards: Sequence[float], num_generations: int) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if num_generations < 1 or r.size % num_generations:
        raise ValueError(f"{r.size} rewards do not split into groups of num_generations={num_generations}")
    return r.reshape(-1, num_generations)


def _nanstd(x: np.ndarray, axis=None) -> np.ndarray:
    """Bessel-corrected std over the finite values (0 where fewer than two), as TRL's nanstd."""
    n = np.sum(np.isfinite(x), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(x, axis=axis, keepdims=axis is not None)
        var = np.nansum((x - mean) ** 2, axis=axis) / (n - 1)
    return np.where(n > 1, np.sqrt(var), 0.0)


def group_std(rewards: Sequence[float], num_generations: int) -> np.ndarray:
    """Per-group reward std (Bessel's correction) [n_groups]; NaN for a group with fewer than two finite rewards
    (`frac_reward_zero_std` counts the groups whose std is 0: nothing to learn from them)."""
    g = _grouped(rewards, num_generations)
    return np.where(np.isfinite(g).sum(axis=1) > 1, _nanstd(g, axis=1), np.nan)


def group_advantages(
    rewards: Sequence[float], num_generations: int, scale_rewards: ScaleRewards = "group"
) -> np.ndarray:
    """GRPO advantages [N] of N = groups * num_generations rewards, groups contiguous (one prompt's samples).

    A = r - mean(group); "group" divides by the group's std (Bessel's correction) + 1e-4, "batch" by the whole
    batch's std + 1e-4, "none" not at all (Dr. GRPO). A NaN reward (the scorer could not decide) is left out of the
    group statistics and gets advantage 0: it teaches nothing. A group whose rewards are all equal gets 0.
    """
    g = _grouped(rewards, num_generations)
    finite = np.isfinite(g)
    # mean over the finite rewards of each group (an all-NaN group: 0, and its advantages are 0 below)
    mean = np.where(finite, g, 0.0).sum(axis=1, keepdims=True) / np.maximum(finite.sum(axis=1, keepdims=True), 1)
    adv = g - mean
    if scale_rewards == "group":
        adv = adv / (_nanstd(g, axis=1)[:, None] + ADV_EPS)
    elif scale_rewards == "batch":
        adv = adv / (_nanstd(g.ravel()) + ADV_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return np.nan_to_num(adv.ravel(), nan=0.0)


def rloo_advantages(
    rewards: Sequence[float],
    num_generations: int,
    *,
    sequence_kl: Sequence[float] | None = None,
    beta: float = 0.0,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """RLOO advantages [N] and the rewards they were computed from (KL-penalised), as TRL's RLOOTrainer.

    r' = r - beta * KL_seq, KL_seq = sum over the completion's tokens of (old logp - ref logp); the baseline of
    each sample is the mean r' of the *other* samples of its prompt: A = r' - (sum(group) - r') / (G - 1).
    normalize: (A - mean A) / (std A + 1e-4) over the batch. NaN rewards: left out of the baselines, advantage 0.
    """
    if num_generations < 2:
        raise ValueError("RLOO needs num_generations >= 2 (the baseline is the other samples of the same prompt)")
    r = np.asarray(rewards, dtype=np.float64)
    if sequence_kl is not None and beta:
        r = r - beta * np.asarray(sequence_kl, dtype=np.float64)
    g = _grouped(r, num_generations)
    finite = np.isfinite(g)
    others = finite.sum(axis=1, keepdims=True) - finite
    with np.errstate(invalid="ignore", divide="ignore"):
        baseline = (np.nansum(g, axis=1, keepdims=True) - np.nan_to_num(g)) / others
    adv = np.where(finite & (others > 0), g - baseline, np.nan).ravel()
    if normalize and np.isfinite(adv).any():
        adv = (adv - np.nanmean(adv)) / (_nanstd(adv) + ADV_EPS)
    return np.nan_to_num(adv, nan=0.0), r


# --- losses -----------------------------------------------------------------------------


def _masked_mean(x: mx.array, mask: mx.array) -> mx.array:
    return (x * mask).sum() / mx.maximum(mask.sum(), 1.0)


def grpo_loss(
    per_token_logps: mx.array,
    old_per_token_logps: mx.array | None,
    ref_per_token_logps: mx.array | None,
    advantages: mx.array,
    mask: mx.array,
    *,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: LossType = "dapo",
    max_completion_length: int | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """The clipped GRPO surrogate over completion tokens ([B, T] log-probs and mask, [B] advantages).

    Per token: -min(c * A, clip(c, 1 - eps_low, 1 + eps_high) * A) with c = exp(logp - old_logp), plus
    beta * k3 where k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's estimator of KL(policy || ref)).
    old None: the samples came from this very policy (num_iterations = 1), c = 1 with its gradient kept.
    Reduction: "grpo" mean over each sequence's tokens then over sequences; "bnpo" and "dapo" mean over all
    completion tokens of the batch (TRL's dapo divides by the token count of the whole accumulation window; here each
    micro-batch is normalised by its own, so with grad_accum > 1 "dapo" is TRL's "bnpo");
    "dr_grpo" sum / (B * max_completion_length).
    Metrics (gradient-free): kl (token mean of k3, when ref is given), clip_ratio/low_mean, high_mean, region_mean.
    """
    old = mx.stop_gradient(per_token_logps) if old_per_token_logps is None else old_per_token_logps
    coef = mx.exp(per_token_logps - old)
    adv = advantages[:, None]
    clipped = mx.clip(coef, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -mx.minimum(coef * adv, clipped * adv)
    metrics: dict[str, mx.array] = {}
    if ref_per_token_logps is not None:
        d = ref_per_token_logps - per_token_logps
        k3 = mx.exp(d) - d - 1
        if beta:
            per_token = per_token + beta * k3
        metrics["kl"] = mx.stop_gradient(_masked_mean(k3, mask))
    elif beta:
        raise ValueError("beta > 0 needs the reference log-probs")
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = _masked_mean(per_token, mask)
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r} (expected grpo, bnpo, dr_grpo or dapo)")
    low = ((coef < 1 - epsilon_low) & (adv < 0)).astype(mx.float32)
    high = ((coef > 1 + epsilon_high) & (adv > 0)).astype(mx.float32)
    metrics["clip_ratio/low_mean"] = mx.stop_gradient(_masked_mean(low, mask))
    metrics["clip_ratio/high_mean"] = mx.stop_gradient(_masked_mean(high, mask))
    metrics["clip_ratio/region_mean"] = mx.stop_gradient(_masked_mean(mx.maximum(low, high), mask))
    return loss, metrics


def rloo_loss(
    per_token_logps: mx.array,
    old_per_token_logps: mx.array | None,
    advantages: mx.array,
    mask: mx.array,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[mx.array, dict[str, mx.array]]:
    """RLOO's clipped surrogate at the sequence level, as TRL's RLOOTrainer: c = exp(sum logp - sum old_logp) per
    completion, loss = mean over sequences of -min(c * A, clip(c, 1 - eps_low, 1 + eps_high) * A). The KL penalty
    is in the reward (`rloo_advantages`), not in the loss. Metrics: clip ratios over sequences."""
    logps = (per_token_logps * mask).sum(axis=1)
    old = mx.stop_gradient(logps) if old_per_token_logps is None else (old_per_token_logps * mask).sum(axis=1)
    coef = mx.exp(logps - old)
    clipped = mx.clip(coef, 1 - epsilon_low, 1 + epsilon_high)
    loss = (-mx.minimum(coef * advantages, clipped * advantages)).mean()
    low = ((coef < 1 - epsilon_low) & (advantages < 0)).astype(mx.float32)
    high = ((coef > 1 + epsilon_high) & (advantages > 0)).astype(mx.float32)
    return loss, {
        "clip_ratio/low_mean": mx.stop_gradient(low.mean()),
        "clip_ratio/high_mean": mx.stop_gradient(high.mean()),
        "clip_ratio/region_mean": mx.stop_gradient(mx.maximum(low, high).mean()),
    }


# --- the loop ---------------------------------------------------------------------------


class RLConfig(BaseModel):
    """On-policy RL settings (TRL's names). One step = one batch of samples + `num_iterations` updates on it."""

    model_config = ConfigDict(extra="forbid")

    estimator: Literal["grpo", "rloo"] = Field(
        "grpo", description="grpo: group-normalised advantages, per-token clipped loss; rloo: leave-one-out baseline."
    )
    num_generations: int = Field(8, ge=2, le=256, description="Completions sampled per prompt (the group, G).")
    num_iterations: int = Field(
        1, ge=1, le=64, description="Updates per batch of samples (mu); > 1 reuses them against their old log-probs."
    )
    # TRL's GRPO now defaults to beta 0; a penalty here pulls the policy toward the reference, as SPEC's KL <= 0.1 asks.
    beta: float = Field(
        0.04, ge=0.0, le=10.0, description="KL coefficient: k3 in the loss (grpo), subtracted from rewards (rloo)."
    )
    epsilon_low: float = Field(0.2, ge=0.0, le=1.0, description="Lower clip: ratios below 1 - this are clipped.")
    epsilon_high: float = Field(
        0.2, ge=0.0, le=10.0, description="Upper clip: ratios above 1 + this are clipped (DAPO raises it to 0.28)."
    )
    loss_type: LossType = Field(
        "dapo", description="grpo: per-sequence token mean; bnpo/dapo: batch token mean; dr_grpo: sum / (B * L)."
    )
    scale_rewards: ScaleRewards = Field(
        "group", description="grpo advantages: divide by the group's std, the batch's std, or none (Dr. GRPO)."
    )
    normalize_advantages: bool = Field(False, description="rloo: standardise the advantages over the batch.")
    entropy_coef: float = Field(
        0.0, ge=0.0, le=1.0, description="Entropy bonus: subtract this times the mean token entropy from the loss."
    )
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Sampling temperature (log-probs use the same).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1.0 disables it.")
    max_completion_length: int = Field(16, ge=1, le=32768, description="Maximum new tokens per completion.")
    generation_batch_size: int = Field(
        128, ge=1, le=4096, description="Sequences decoded together (prompts per step * G are split into these)."
    )
    chat: bool = Field(True, description="Apply the tokenizer's chat template to each prompt.")
    train: TrainConfig = Field(
        TrainConfig(steps=100, batch_size=16, learning_rate=1e-5, lora=None, checkpoint_every=20),
        description="Optimiser: steps = sampling steps, batch_size = prompts per micro-batch (each makes G samples), "
        "kl_limit stops early on the step's KL.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "RLConfig":
        if self.estimator == "rloo" and self.entropy_coef:
            raise ValueError("entropy_coef applies to estimator 'grpo' (TRL's RLOO has no entropy bonus)")
        return self


@dataclass
class Rollout:
    """One micro-batch of samples with everything the update needs, fixed before the first update."""

    prompts: list[str]
    texts: list[str]
    rewards: np.ndarray  # [N] as scored (NaN: the scorer could not decide)
    advantages: np.ndarray  # [N]
    tokens: mx.array  # [N, T]
    mask: mx.array  # [N, T-1] completion tokens
    old_logps: mx.array | None  # [N, T-1] when num_iterations > 1
    ref_logps: mx.array  # [N, T-1]
    lengths: list[int]
    # The whole micro-batch's rewards over every rank (this rank's N of them among), for the advantages and the logs.
    all_rewards: np.ndarray | None = None


def token_logps(model: nn.Module, tokens: mx.array, temperature: float = 1.0) -> tuple[mx.array, mx.array]:
    """(log-probs of the next tokens [B, T-1] at `temperature`, raw logits [B, T-1, V])."""
    logits = model(tokens[:, :-1])
    scaled = logits / temperature if temperature != 1.0 else logits
    return token_logps_from_logits(scaled, tokens[:, 1:]), logits


def _sample(
    model, tokenizer, prompts: list[str], cfg: RLConfig, seed: int
) -> tuple[list[str], list[Encoded], list[int]]:
    """G completions per prompt (grouped, in prompt order): texts, the token sequences as sampled (the stop token
    kept when the model emitted it, so stopping is learned too), and completion lengths."""
    gen = GenerationConfig(
        n=cfg.num_generations,
        batch_size=cfg.generation_batch_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_completion_length,
        seed=seed,
        chat=cfg.chat,
    )
    samples = generate(model, tokenizer, prompts, gen)
    # mlx-lm's batch_generate drops the stop token without saying which one it was: the tokenizer's eos_token_id
    # stands for it (exact when the tokenizer has one stop token, as Qwen's chat models' <|im_end|>).
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id: RL needs it to train stopping")
    texts, encoded, lengths = [], [], []
    for prompt, group in zip(prompts, samples):
        p = prompt_tokens(tokenizer, prompt, cfg.chat)
        for c in group:
            ids = list(c.tokens) + ([eos] if c.finished else [])
            texts.append(c.text)
            encoded.append(Encoded(p + ids, len(p)))
            lengths.append(len(ids))  # completion tokens including the stop token, as TRL counts them
    return texts, encoded, lengths


def rollout(
    policy: nn.Module,
    reference: nn.Module | None,
    tokenizer,
    prompts: list[str],
    reward_fn: Callable[[list[str], list[str]], Sequence[float]],
    cfg: RLConfig,
    seed: int,
    pool: Callable[[np.ndarray], tuple[np.ndarray, int]] | None = None,
) -> Rollout:
    """Sample, score and fix the advantages of one micro-batch. reference None: the policy's own base (LoRA
    adapters off); without adapters a reference model is required (ValueError).

    pool(values) -> (the micro-batch's values over every rank, where this rank's start): under data parallelism
    each rank samples whole groups, and the advantages are computed on the pooled rewards (and RLOO's sequence KL),
    so batch-level statistics (scale_rewards "batch", RLOO's normalize) are the global batch's, as in one process.
    """
    texts, encoded, lengths = _sample(policy, tokenizer, prompts, cfg, seed)
    return score_samples(policy, reference, tokenizer, prompts, texts, encoded, lengths, reward_fn, cfg, pool)


def score_samples(
    policy: nn.Module,
    reference: nn.Module | None,
    tokenizer,
    prompts: list[str],
    texts: list[str],
    encoded: list[Encoded],
    lengths: list[int],
    reward_fn: Callable[[list[str], list[str]], Sequence[float]],
    cfg: RLConfig,
    pool: Callable[[np.ndarray], tuple[np.ndarray, int]] | None = None,
) -> Rollout:
    """The rest of `rollout` once the G samples per prompt are drawn (grouped, in prompt order): rewards,
    reference (and old) log-probs, advantages."""
    flat_prompts = [p for p in prompts for _ in range(cfg.num_generations)]
    rewards = np.asarray(reward_fn(flat_prompts, texts), dtype=np.float64)
    if rewards.shape != (len(texts),):
        raise ValueError(f"the reward function returned {rewards.shape} rewards for {len(texts)} completions")
    batch = collate(encoded, pad_id=_pad_id(tokenizer))
    if reference is not None:
        ref_lp, _ = token_logps(reference, batch.tokens, cfg.temperature)
    elif has_adapters(policy):
        with adapters_disabled(policy):
            ref_lp, _ = token_logps(policy, batch.tokens, cfg.temperature)
    else:
        raise ValueError("RL needs a reference: pass a frozen copy of the start model, or train with LoRA")
    old_lp = None
    if cfg.num_iterations > 1 or cfg.estimator == "rloo":
        old_lp, _ = token_logps(policy, batch.tokens, cfg.temperature)
        old_lp = mx.stop_gradient(old_lp)
    ref_lp = mx.stop_gradient(ref_lp)
    mx.eval(ref_lp, *([old_lp] if old_lp is not None else []))
    all_rewards, at = pool(rewards) if pool else (rewards, 0)
    if cfg.estimator == "grpo":
        adv = group_advantages(all_rewards, cfg.num_generations, cfg.scale_rewards)
    else:
        seq_kl = np.array(((old_lp - ref_lp) * batch.mask).sum(axis=1))
        all_kl = pool(seq_kl)[0] if pool else seq_kl
        adv, _ = rloo_advantages(
            all_rewards, cfg.num_generations, sequence_kl=all_kl, beta=cfg.beta, normalize=cfg.normalize_advantages
        )
    adv = adv[at : at + len(rewards)]
    if cfg.num_iterations == 1:
        old_lp = None  # the update's own (detached) log-probs are the old ones: identical values, no stale copy
    return Rollout(prompts, texts, rewards, adv, batch.tokens, batch.mask, old_lp, ref_lp, lengths, all_rewards)


def rank_pool(
    counts: Sequence[int], num_generations: int, group: mx.distributed.Group
) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    """`rollout`'s pool when rank r samples counts[r] prompts (G samples each) of a micro-batch: values -> (every
    rank's, in rank order = the single process's prompt order, and where this rank's start)."""
    per_rank = [c * num_generations for c in counts]
    at = sum(per_rank[: group.rank()])
    return lambda values: (gather_ragged(values, per_rank, group), at)


def loss_shares(cfg: RLConfig, rolls: Sequence[Rollout], group: mx.distributed.Group | None) -> list[float]:
    """Per micro-batch, this rank's share of what the loss averages over: completion tokens ("bnpo", "dapo") or
    sequences ("grpo", "dr_grpo", RLOO), this rank's count over all ranks'. 1.0 each without a group."""
    if group is None:
        return [1.0] * len(rolls)
    tokens = cfg.estimator == "grpo" and cfg.loss_type in ("bnpo", "dapo")
    weights = [float(r.mask.sum().item()) if tokens else float(r.mask.shape[0]) for r in rolls]
    totals = mx.distributed.all_sum(mx.array(weights, dtype=mx.float32), group=group).tolist()
    # no completion token anywhere (every sample empty): nothing to average, the sequences decide
    sequences = mx.distributed.all_sum(mx.array([float(r.mask.shape[0]) for r in rolls]), group=group).tolist()
    return [w / t if t > 0 else r.mask.shape[0] / n for w, t, r, n in zip(weights, totals, rolls, sequences)]


def rollout_gradient(
    grad_step: Callable[[dict], tuple[mx.array, dict, dict]],
    rolls: Sequence[Rollout],
    fracs: Sequence[float],
    group: mx.distributed.Group | None,
    sums: dict[str, float],
) -> tuple[dict, float, float]:
    """The summed gradient of one update over the micro-batches `rolls` (and over ranks, each weighed by its share
    `fracs`), adding each metric times its share into `sums`. Returns (gradient, seconds waiting for the slowest
    rank, seconds in the all_sum)."""
    acc = None
    for r, frac in zip(rolls, fracs):
        batch = {"tokens": r.tokens, "mask": r.mask, "ref_logps": r.ref_logps}
        batch["advantages"] = mx.array(r.advantages, dtype=mx.float32)
        if r.old_logps is not None:
            batch["old_logps"] = r.old_logps
        _, metrics, grads = grad_step(batch)
        if group is not None:
            grads = tree_map(lambda g, f=frac: g * f, grads)
        acc = grads if acc is None else tree_map(mx.add, acc, grads)
        mx.eval(acc, metrics)
        for name, v in metrics.items():
            sums[name] = sums.get(name, 0.0) + v.item() * frac
    if group is None:
        return acc, 0.0, 0.0
    # A one-element all_sum is a barrier: the time in it is this rank waiting for the slowest one.
    t0 = time.perf_counter()
    mx.eval(mx.distributed.all_sum(mx.zeros(1), group=group))
    t1 = time.perf_counter()
    acc = sum_tree(acc, group)
    mx.eval(acc)
    return acc, t1 - t0, time.perf_counter() - t1


def rl_loss(cfg: RLConfig) -> Callable[[nn.Module, dict], tuple[mx.array, dict]]:
    """(policy, batch) -> (loss, metrics) for a rollout batch: tokens, mask, advantages, ref_logps[, old_logps].
    Entropy is measured on the same logits the loss uses (no extra forward pass)."""

    def loss_fn(model: nn.Module, batch: dict) -> tuple[mx.array, dict]:
        lp, logits = token_logps(model, batch["tokens"], cfg.temperature)
        mask, old = batch["mask"], batch.get("old_logps")
        if cfg.estimator == "grpo":
            loss, metrics = grpo_loss(
                lp,
                old,
                batch["ref_logps"],
                batch["advantages"],
                mask,
                beta=cfg.beta,
                epsilon_low=cfg.epsilon_low,
                epsilon_high=cfg.epsilon_high,
                loss_type=cfg.loss_type,
                max_completion_length=cfg.max_completion_length,
            )
        else:
            loss, metrics = rloo_loss(
                lp, old, batch["advantages"], mask, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high
            )
            # TRL's RLOO logs the token mean of (old - ref): the per-token KL estimate its reward is penalised by
            sampled = mx.stop_gradient(lp) if old is None else old
            metrics["kl"] = mx.stop_gradient(_masked_mean(sampled - batch["ref_logps"], mask))
        scaled = logits / cfg.temperature if cfg.temperature != 1.0 else logits
        entropy = _masked_mean(token_entropy(scaled), mask)
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy
        metrics["entropy"] = mx.stop_gradient(entropy)
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn


def rl_train(
    policy: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable[[list[str], list[str]], Sequence[float]],
    cfg: RLConfig,
    *,
    reference: nn.Module | None = None,
    out_dir: str | Path | None = None,
    callback: Callable[[dict], None] | None = None,
    resume_key: str | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train `policy` (prepared with `prepare_model`) with on-policy RL on `prompts` for `cfg.train.steps` steps.

    reward_fn(prompts, completions) -> one reward per completion (any Scorer's `score`, or a weighted sum).
    Step s samples prompts `batch_indices(seed)(s)` with sampling seed f(seed, s), so a run resumed from a
    checkpoint (weights, optimizer state, step) draws exactly what the original would have. callback(row) after
    every step with TRL's names: reward, reward_std, frac_reward_zero_std, kl, entropy, clip_ratio/*,
    completions/mean_length, loss, lr, grad_norm, and tokens, seconds, samples_per_s, tokens_per_s.
    Stops early when the step's KL passes `cfg.train.kl_limit`.

    parallel: data parallelism over `mlx.launch` ranks. Each rank takes whole prompts (their G samples stay on one
    rank, so group statistics need no communication) in proportion to `parallel.shares`, samples with its own seed,
    pools the rewards for the advantages, and weighs its gradient by its share of what the loss averages over
    (`loss_shares`); one all_sum per update gives every rank the same gradient. The sampled completions differ from
    one process's (other seeds, other batch compositions); for the same samples the gradient is the one process's.
    Rank 0 alone resumes, checkpoints and calls `callback`; rows add compute_s/rankN, wait_s/rankN, comm_s, ranks.
    Where the loss averages over sequences (grpo, dr_grpo, RLOO), the token means in it and in the logs (the entropy
    bonus, kl, entropy, clip ratios) are combined by sequence shares too: an average of the ranks' token means, not
    the global token mean, so kl_limit reads that average. A rank whose reward function raises leaves the others
    waiting in a collective until mlx.launch stops them all.
    """
    tc = cfg.train
    if not prompts:
        raise ValueError("no prompts to train on")
    if tc.lora is not None and tc.lora.dropout:
        raise ValueError("RL with LoRA dropout: old and new log-probs would differ by noise; set train.lora.dropout 0")
    prompts = list(prompts)
    group = parallel.group if parallel is not None and parallel.size > 1 else None
    rank, size = (group.rank(), group.size()) if group else (0, 1)
    # One warmup + cosine schedule over every update: each step makes num_iterations of them (TRL counts each).
    mu = cfg.num_iterations
    optimizer = make_optimizer(tc.model_copy(update={"steps": tc.steps * mu, "warmup_steps": tc.warmup_steps * mu}))
    ckpt_root = Path(out_dir) / "checkpoints" if out_dir and rank == 0 else None
    # Checkpoints resume only under the same RL settings too (beta, G, estimator...), not just the optimiser's.
    key = hashlib.sha256(f"{resume_key or ''}|{cfg.model_dump_json()}".encode()).hexdigest()
    start, history, warning = resume_checkpoint(ckpt_root, policy, optimizer, tc, key)
    last_kl = history[-1].get("kl", math.nan) if history else math.nan
    if group:
        start = sync_start(policy, optimizer, start, group)
        last_kl = mx.distributed.all_sum(mx.array(last_kl if rank == 0 else 0.0), group=group).item()
    result = TrainResult(
        steps_done=start, stopped="completed", history=history, resumed_from=start, resume_warning=warning
    )
    if start < tc.steps and tc.kl_limit is not None and last_kl > tc.kl_limit:
        # the run being resumed had stopped on its KL limit: stopping again is what it did, not training past it
        result.stopped, result.reason = "kl_limit", f"KL {last_kl:.4f} > limit {tc.kl_limit} at step {start}"
        return result
    loss_fn = rl_loss(cfg)
    value_and_grad = nn.value_and_grad(policy, lambda b: loss_fn(policy, b))

    def grad_step(batch: dict):
        (loss, metrics), grads = value_and_grad(batch)
        return loss, metrics, grads

    if tc.compile:
        state = [policy.state, mx.random.state]
        grad_step = mx.compile(grad_step, inputs=state, outputs=state)
    order = batch_indices(len(prompts), tc.batch_size, tc.seed)
    G = cfg.num_generations
    for step in range(start, tc.steps):
        t0 = time.perf_counter()
        mx.random.seed((tc.seed * 1_000_003 + step) % 2**32)
        rolls, fracs, samples_per_rank = [], [], [0] * size
        for k in range(tc.grad_accum):
            chosen = order(step * tc.grad_accum + k)
            counts = split_counts(len(chosen), parallel.shares if group else None, size)
            first = sum(counts[:rank])
            samples_per_rank = [n + c * G for n, c in zip(samples_per_rank, counts)]
            rolls.append(
                rollout(
                    policy,
                    reference,
                    tokenizer,
                    [prompts[j] for j in chosen[first : first + counts[rank]]],
                    reward_fn,
                    cfg,
                    # rank 0's seed is the single process's formula (with one rank, the same draws as before)
                    seed=(tc.seed * 7_919 + step * tc.grad_accum + k + rank * 1_000_033) % 2**31,
                    pool=rank_pool(counts, G, group) if group else None,
                )
            )
        fracs = loss_shares(cfg, rolls, group)
        t_sampled = time.perf_counter()
        sums: dict[str, float] = {}
        grad_norm, lr, updates, wait_s, comm_s = None, 0.0, 0, 0.0, 0.0
        for _ in range(cfg.num_iterations):
            acc, waited, communicated = rollout_gradient(grad_step, rolls, fracs, group, sums)
            wait_s, comm_s = wait_s + waited, comm_s + communicated
            if tc.grad_accum > 1:
                acc = tree_map(lambda g: g / tc.grad_accum, acc)
            if tc.max_grad_norm is not None:
                acc, grad_norm = optim.clip_grad_norm(acc, tc.max_grad_norm)
            optimizer.update(policy, acc)
            mx.eval(policy.parameters(), optimizer.state)
            # read after the update: MLX sets the scheduled rate as it applies it (before, it holds the previous one)
            lr_now = optimizer.learning_rate
            lr = lr_now.item() if isinstance(lr_now, mx.array) else float(lr_now)
            updates += 1
        if group:  # every rank's weighted metrics, summed: the global batch's means
            names = sorted(sums)
            summed = mx.distributed.all_sum(mx.array([sums[n] for n in names], dtype=mx.float32), group=group)
            sums = dict(zip(names, summed.tolist()))
        rewards = np.concatenate([r.all_rewards for r in rolls])
        stds = np.concatenate([group_std(r.all_rewards, G) for r in rolls])
        finite = rewards[np.isfinite(rewards)]
        lengths = [n for r in rolls for n in r.lengths]
        ntoks = float(sum(r.mask.sum().item() for r in rolls))
        if group:
            lengths = gather_ragged(np.array(lengths), samples_per_rank, group).tolist()
            ntoks = mx.distributed.all_sum(mx.array(ntoks), group=group).item()
        dt = time.perf_counter() - t0
        # divided by updates * micro-batches: each micro-batch's metrics are means (weighted over ranks: still means)
        row = {"step": step + 1, "lr": lr}
        row.update({k: v / (updates * len(rolls)) for k, v in sums.items()})
        row.update(
            {
                "reward": float(finite.mean()) if finite.size else math.nan,
                # TRL 1.x: the std of the whole batch's rewards (the group stds are in frac_reward_zero_std)
                "reward_std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                "frac_reward_zero_std": float(np.isclose(stds[np.isfinite(stds)], 0.0).sum() / len(stds)),
                "reward_unscored": int(np.isnan(rewards).sum()),
                "completions/mean_length": float(np.mean(lengths)),
                "tokens": ntoks,
                "samples": len(rewards),
                "seconds": dt,
                "sampling_seconds": t_sampled - t0,
                "samples_per_s": len(rewards) / dt if dt > 0 else math.nan,
                "tokens_per_s": ntoks / dt if dt > 0 else math.nan,
            }
        )
        if grad_norm is not None:
            row["grad_norm"] = grad_norm.item()
        if group:
            times = mx.distributed.all_gather(mx.array([dt - wait_s - comm_s, wait_s]), group=group).tolist()
            for r in range(size):
                row[f"compute_s/rank{r}"], row[f"wait_s/rank{r}"] = times[2 * r], times[2 * r + 1]
            row.update({"comm_s": comm_s, "ranks": size})
        history.append(row)
        result.steps_done = step + 1
        if callback and rank == 0:
            callback(row)
        kl = row.get("kl", math.nan)
        stop = tc.kl_limit is not None and not math.isnan(kl) and kl > tc.kl_limit
        if ckpt_root is not None and (
            (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0) or step + 1 == tc.steps or stop
        ):
            result.checkpoint = save_checkpoint(ckpt_root, step + 1, policy, optimizer, tc, history, key)
        if stop:
            result.stopped = "kl_limit"
            result.reason = f"KL {kl:.4f} > limit {tc.kl_limit} at step {step + 1}"
            break
    return result
