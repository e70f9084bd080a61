"""Scorers: `score(prompts, completions) -> list of floats in [0, 1]`.

Three kinds, as the workflows need them:
  Verifier     exact / numeric / custom check against a known answer (RLVR, the demo tasks);
  JudgeScorer  an MLX model prompted to rate an answer 0-10; its rating is parsed, and an
               answer it cannot parse is reported (NaN + `unparsed`), never guessed;
  RewardModel  a linear head on a frozen model's pooled hidden states, trained with the
               Bradley-Terry loss -log sigmoid(r_c - r_r); score = sigmoid(reward).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np


class Scorer(Protocol):
    name: str

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """One score in [0, 1] per completion (NaN where the scorer could not decide)."""
        ...


# --- verifier -----------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


class Verifier:
    """Checks completions against known answers.

    answers: prompt -> expected answer (a mapping or a function).
    mode "exact": trimmed string equality; "numeric": the completion's last number equals
    the expected number within `tolerance`; or pass `check(completion, expected) -> bool`.
    """

    def __init__(self, answers: Mapping[str, str] | Callable[[str], str], mode: Literal["exact", "numeric"] = "exact",
                 check: Callable[[str, str], bool] | None = None, tolerance: float = 1e-6, name: str = "verifier"):
        self.answers, self.mode, self.check, self.tolerance, self.name = answers, mode, check, tolerance, name

    def expected(self, prompt: str) -> str:
        if callable(self.answers):
            return self.answers(prompt)
        if prompt not in self.answers:
            raise KeyError(f"no known answer for prompt {prompt[:80]!r}: the verifier can only score prompts it has answers for")
        return self.answers[prompt]

    def is_correct(self, prompt: str, completion: str) -> bool:
        expected = self.expected(prompt)
        if self.check is not None:
            return bool(self.check(completion, expected))
        if self.mode == "numeric":
            got, want = last_number(completion), last_number(expected)
            return got is not None and want is not None and abs(got - want) <= self.tolerance
        return completion.strip() == expected.strip()

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1.0 if self.is_correct(p, c) else 0.0 for p, c in zip(prompts, completions, strict=True)]


# --- judge model ----------------------------------------------------------------------

JUDGE_TEMPLATE = (
    "Rate how well the answer responds to the question, from 0 (useless or wrong) to 10 (perfect).\n"
    "Question: {prompt}\nAnswer: {completion}\nReply with the number only.\nRating:"
)
_RATING = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?")


def parse_rating(text: str, scale: float = 10.0) -> float | None:
    """The first rating in a judge's reply, as a fraction of `scale`; None when there is none in range.

    Accepts "8", "Rating: 7/10", "I'd give it 9.5". A "x/y" rating is read as x out of y.
    """
    m = _RATING.search(text)
    if not m:
        return None
    value = float(m.group(1))
    denom = float(m.group(2)) if m.group(2) else scale
    if denom <= 0 or value < 0 or value > denom:
        return None
    return value / denom


@dataclass
class JudgeScorer:
    """An MLX model that rates answers. Unparseable replies give NaN and are listed in `unparsed`."""

    model: object
    tokenizer: object
    template: str = JUDGE_TEMPLATE
    max_tokens: int = 8
    batch_size: int = 16
    scale: float = 10.0
    name: str = "judge"
    unparsed: list[tuple[int, str]] = field(default_factory=list)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        from realign.generate import GenerationConfig, generate

        queries = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions, strict=True)]
        replies = generate(self.model, self.tokenizer, queries,
                           GenerationConfig(temperature=0.0, max_tokens=self.max_tokens, batch_size=self.batch_size))
        self.unparsed = []
        scores = []
        for i, r in enumerate(replies):
            value = parse_rating(r[0].text, self.scale)
            if value is None:
                self.unparsed.append((i, r[0].text))
                scores.append(float("nan"))
            else:
                scores.append(value)
        return scores


# --- reward model ----------------------------------------------------------------------


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

    def __init__(self, model, tokenizer, pooling: Literal["mean", "last"] = "mean", chat: bool = True, max_len: int = 512):
        self.model, self.tokenizer, self.pooling, self.chat, self.max_len = model, tokenizer, pooling, chat, max_len
        self.w: np.ndarray | None = None
        self.b: float = 0.0

    def features(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Pooled final hidden states [N, hidden] of the frozen model (float32)."""
        import mlx.core as mx

        from realign.logprobs import _pad_id, collate, encode

        out = []
        for s in range(0, len(prompts), batch_size):
            encs = [encode(self.tokenizer, p, c, chat=self.chat, max_len=self.max_len)
                    for p, c in zip(prompts[s : s + batch_size], completions[s : s + batch_size])]
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

    def fit(self, pairs: Sequence[dict], *, val_fraction: float = 0.2, steps: int = 300, learning_rate: float = 0.05,
            weight_decay: float = 0.01, seed: int = 0) -> RewardFitResult:
        """Fit the head on pairs {prompt, chosen, rejected} with the Bradley-Terry loss.

        A seeded `val_fraction` of the pairs is held out and never trained on.
        """
        import mlx.core as mx
        import mlx.optimizers as optim

        from realign.losses import bradley_terry_loss

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
