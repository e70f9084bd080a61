"""Reward models: a linear probe on a frozen model's pooled hidden states (the DPO workflow's cheap check), and a
reward model as a model (a scalar head on a causal LM, trained end to end with the Bradley-Terry loss) that scores."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


@dataclass
class RewardFitResult:
    """Bradley-Terry fit of the head: accuracies on the train and held-out pairs, loss per step."""

    train_accuracy: float
    val_accuracy: float
    n_train: int
    n_val: int
    losses: list[float]

    @property
    def train_val_gap(self) -> float:
        return self.train_accuracy - self.val_accuracy


class RewardModel:
    """reward(prompt, completion) = w . pool(hidden states of the frozen model) + b.

    pooling "mean": mean over completion tokens; "last": the last completion token.
    Features are computed once per text by the frozen model, so fitting is cheap.
    """

    name = "reward_model"

    def __init__(
        self, model, tokenizer, pooling: Literal["mean", "last"] = "mean", chat: bool = True, max_len: int = 512
    ):
        self.model, self.tokenizer, self.pooling, self.chat, self.max_len = model, tokenizer, pooling, chat, max_len
        self.w: np.ndarray | None = None
        self.b: float = 0.0

    def features(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Pooled final hidden states [N, hidden] of the frozen model (float32)."""
        import mlx.core as mx

        from realign.model.logprobs import _pad_id, collate, encode

        out = []
        for s in range(0, len(prompts), batch_size):
            encs = [
                encode(self.tokenizer, p, c, chat=self.chat, max_len=self.max_len)
                for p, c in zip(prompts[s : s + batch_size], completions[s : s + batch_size])
            ]
            batch = collate(encs, pad_id=_pad_id(self.tokenizer))
            hidden = self.model.model(batch.tokens)  # [B, T, H] after the final norm
            # mask over positions 0..T-1 marking completion tokens themselves
            pos = mx.concatenate([mx.zeros((batch.mask.shape[0], 1)), batch.mask], axis=1)
            if self.pooling == "mean":
                pooled = (hidden * pos[..., None]).sum(axis=1) / mx.maximum(pos.sum(axis=1, keepdims=True), 1)
            else:
                last = mx.array([len(e.ids) - 1 for e in encs])
                pooled = hidden[mx.arange(len(encs)), last]
            mx.eval(pooled)
            out.append(np.array(pooled.astype(mx.float32)))
        return np.concatenate(out, axis=0)

    def fit(
        self,
        pairs: Sequence[dict],
        *,
        val_fraction: float = 0.2,
        steps: int = 300,
        learning_rate: float = 0.05,
        weight_decay: float = 0.01,
        seed: int = 0,
    ) -> RewardFitResult:
        """Fit the head on pairs {prompt, chosen, rejected} with the Bradley-Terry loss.

        A seeded `val_fraction` of the pairs is held out and never trained on.
        """
        import mlx.core as mx
        import mlx.optimizers as optim

        from realign.train.losses import bradley_terry_loss

        if len(pairs) < 2:
            raise ValueError(f"need at least 2 pairs to fit and validate a reward model, got {len(pairs)}")
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(len(pairs) * val_fraction)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        prompts = [p["prompt"] for p in pairs]
        fc = self.features(prompts, [p["chosen"] for p in pairs])
        fr = self.features(prompts, [p["rejected"] for p in pairs])
        # Standardise features on the training pairs so one learning rate suits every model size.
        both = np.concatenate([fc[train_idx], fr[train_idx]])
        self._mu, self._sd = both.mean(axis=0), both.std(axis=0) + 1e-6
        zc, zr = (fc - self._mu) / self._sd, (fr - self._mu) / self._sd
        xc, xr = mx.array(zc[train_idx]), mx.array(zr[train_idx])
        params = {"w": mx.zeros((fc.shape[1],))}
        opt = optim.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)

        def loss_fn(p):
            return bradley_terry_loss(xc @ p["w"], xr @ p["w"]).mean()

        grad = mx.value_and_grad(loss_fn)
        losses = []
        for _ in range(steps):
            loss, g = grad(params)
            params = opt.apply_gradients(g, params)
            mx.eval(params, opt.state)
            losses.append(loss.item())
        w = np.array(params["w"])
        self.w, self.b = w / self._sd, float(-(self._mu / self._sd) @ w)  # fold the standardisation into w, b

        def acc(idx):
            return float(np.mean((fc[idx] @ self.w) > (fr[idx] @ self.w))) if len(idx) else float("nan")

        return RewardFitResult(acc(train_idx), acc(val_idx), len(train_idx), len(val_idx), losses)

    def reward(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Raw rewards (unbounded)."""
        if self.w is None:
            raise RuntimeError("the reward model has no head yet: call fit() or load() first")
        return self.features(prompts, completions) @ self.w + self.b

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """sigmoid(reward) in (0, 1)."""
        return [1 / (1 + math.exp(-float(r))) for r in self.reward(prompts, completions)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"w": self.w.tolist(), "b": self.b, "pooling": self.pooling}))
        return path

    def load(self, path: str | Path) -> "RewardModel":
        data = json.loads(Path(path).read_text())
        self.w, self.b, self.pooling = np.array(data["w"]), float(data["b"]), data["pooling"]
        return self


# --- a reward model as a model ------------------------------------------------------------

REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "score_head.safetensors"  # not model*.safetensors: mlx_lm.load reads the backbone's weights only


def _nn():
    # mlx is imported when a reward model is built or used: importing this module (the linear probe's config, the
    # constants) must not load MLX.
    import mlx.core as mx
    import mlx.nn as nn

    return mx, nn


def sequence_reward_model(lm_model, seed: int = 0):
    """A scalar head on a causal LM's final hidden state at the last non-padding token (TRL's sequence-
    classification reward model: `score`, a bias-free Linear(hidden, 1)). Returns an mlx Module whose call
    (tokens [B, T], last [B]) gives rewards [B]; `.layers` are the backbone's, so LoRA applies to it."""
    mx, nn = _nn()

    class SequenceRewardModel(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            # the model's hidden size from its config: a quantised embedding's weight is packed (dims * bits / 32)
            args = getattr(backbone, "args", None)
            hidden = getattr(args, "hidden_size", None) or backbone.model.norm.weight.shape[0]
            self.score = nn.Linear(hidden, 1, bias=False)
            # HF initialises the head N(0, 0.02) (initializer_range); seeded so a run is reproducible
            self.score.weight = 0.02 * mx.random.normal((1, hidden), key=mx.random.key(seed))

        @property
        def layers(self):
            return self.backbone.layers

        def __call__(self, tokens, last):
            hidden = self.backbone.model(tokens)  # [B, T, H] after the final norm
            return self.score(hidden[mx.arange(tokens.shape[0]), last]).squeeze(-1)

    return SequenceRewardModel(lm_model)


def reward_model_loss(model, batch: dict):
    """Bradley-Terry loss over a batch of B pairs (rows [0, B) chosen, [B, 2B) rejected), optional margin [B]:
    -log sigmoid(r_c - r_r - margin), TRL's RewardTrainer. Metrics with TRL's names: loss, accuracy (share of pairs
    with r_c > r_r, ties wrong), margin (mean r_c - r_r)."""
    mx, _ = _nn()
    from realign.train.losses import bradley_terry_loss

    rewards = model(batch["tokens"], batch["last"])
    B = rewards.shape[0] // 2
    rc, rr = rewards[:B], rewards[B:]
    loss = bradley_terry_loss(rc, rr, batch.get("margin")).mean()
    diff = mx.stop_gradient(rc - rr)
    return loss, {"loss": loss, "accuracy": (diff > 0).astype(mx.float32).mean(), "margin": diff.mean()}


def _encode_rows(tokenizer, prompts, completions, chat: bool, max_len: int):
    from realign.model.logprobs import encode

    return [encode(tokenizer, p, c, chat=chat, max_len=max_len) for p, c in zip(prompts, completions, strict=True)]


def _batch(tokenizer, encs) -> dict:
    mx, _ = _nn()
    from realign.model.logprobs import _pad_id, collate

    tb = collate(encs, pad_id=_pad_id(tokenizer))
    return {"tokens": tb.tokens, "mask": tb.mask, "last": mx.array([len(e.ids) - 1 for e in encs])}


def reward_model_batches(tokenizer, pairs: Sequence[dict], cfg, *, chat: bool = True, margin_scale: float = 0.0):
    """Micro-batch i -> {tokens, mask, last[, margin]} of cfg.batch_size pairs, chosen rows then rejected rows; a pure
    function of i (seeded order), so a resumed run sees the same data. margin_scale > 0: margin = scale * the pair's
    score gap (chosen_score - rejected_score), TRL's `margin` column."""
    mx, _ = _nn()
    from realign.train.batches import batch_indices

    prompts = [p["prompt"] for p in pairs]
    chosen = _encode_rows(tokenizer, prompts, [p["chosen"] for p in pairs], chat, cfg.max_seq_len)
    rejected = _encode_rows(tokenizer, prompts, [p["rejected"] for p in pairs], chat, cfg.max_seq_len)
    gaps = np.array([float(p.get("chosen_score", 0.0)) - float(p.get("rejected_score", 0.0)) for p in pairs])
    lengths = [max(len(c.ids), len(r.ids)) for c, r in zip(chosen, rejected)] if cfg.group_by_length else None
    order = batch_indices(len(pairs), cfg.batch_size, cfg.seed, lengths)

    def at(i: int) -> dict:
        idx = order(i)
        batch = _batch(tokenizer, [chosen[j] for j in idx] + [rejected[j] for j in idx])
        if margin_scale:
            batch["margin"] = mx.array(margin_scale * gaps[idx], dtype=mx.float32)
        return batch

    return at


class RewardModelScorer:
    """A trained reward model loaded from its directory: `reward` raw values, `score` sigmoid(reward) in (0, 1)."""

    name = "reward_model"

    def __init__(self, model, tokenizer, path: Path, config: dict):
        self.model, self.tokenizer, self.path, self.config = model, tokenizer, path, config
        self.chat, self.max_len = bool(config.get("chat", True)), int(config.get("max_len", 512))

    def reward(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32) -> np.ndarray:
        mx, _ = _nn()
        out = []
        for s in range(0, len(prompts), batch_size):
            encs = _encode_rows(
                self.tokenizer, prompts[s : s + batch_size], completions[s : s + batch_size], self.chat, self.max_len
            )
            b = _batch(self.tokenizer, encs)
            r = self.model(b["tokens"], b["last"])
            mx.eval(r)
            out.append(np.array(r.astype(mx.float32), dtype=np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1 / (1 + math.exp(-float(r))) for r in self.reward(prompts, completions)]


def save_reward_model(model, source_dir: str | Path, out_dir: str | Path, **config) -> Path:
    """Write the reward model as a directory: the backbone as a model directory (adapters fused, `source_dir`'s
    tokenizer and config), the head in score_head.safetensors, and reward_config.json last (its presence marks a
    complete reward model). `config`: what scoring needs to know (chat, max_len) and provenance."""
    import mlx.core as mx

    from realign.io import write_json
    from realign.model.load import save_model

    out = save_model(model.backbone, source_dir, out_dir)
    # save_model copies the source's other files: a source that is itself a reward model brings its config along,
    # which must not mark this directory complete before its own head is written.
    (out / REWARD_CONFIG).unlink(missing_ok=True)
    tmp = out / f".{HEAD_FILE}"
    mx.save_safetensors(str(tmp), {"score.weight": model.score.weight})
    os.replace(tmp, out / HEAD_FILE)
    write_json(out / REWARD_CONFIG, {"type": "realign-reward-model", "head": HEAD_FILE, **config})
    return out


def load_reward_model(path: str | Path) -> RewardModelScorer:
    """A reward model directory written by `save_reward_model`, as a scorer. ValueError naming what is missing."""
    import mlx.core as mx

    from realign.model.load import load_model

    path = Path(path)
    cfg_path = path / REWARD_CONFIG
    if not cfg_path.is_file():
        raise ValueError(
            f"{path}: not a reward model directory ({REWARD_CONFIG} missing): train one with the SRF workflow's "
            "stage 3, or name its 03_reward_model_training/reward_model directory"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: unreadable ({exc}); retrain the reward model (SRF stage 3)") from exc
    if config.get("type") != "realign-reward-model":
        raise ValueError(f"{cfg_path}: type {config.get('type')!r}, expected 'realign-reward-model'")
    head_path = path / config.get("head", HEAD_FILE)
    if not head_path.is_file():
        raise ValueError(f"{head_path}: the reward head is missing; retrain the reward model (SRF stage 3)")
    lm = load_model(path)
    model = sequence_reward_model(lm.model)
    head = mx.load(str(head_path))
    if "score.weight" not in head:
        raise ValueError(f"{head_path}: no 'score.weight' (expected the reward head)")
    model.score.weight = head["score.weight"]
    model.eval()
    return RewardModelScorer(model, lm.tokenizer, path, config)
