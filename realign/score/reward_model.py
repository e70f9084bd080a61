"""A reward model: a linear head on a frozen model's pooled hidden states, Bradley-Terry loss."""

from __future__ import annotations

import json
import math
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
