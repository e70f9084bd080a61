"""Data-parallel training over `mlx.core.distributed` ranks (launched by `mlx.launch`; MLX is the transport).

Every rank builds the same *global* micro-batch (batch sources are pure functions of the index), takes its own
slice of it, computes the gradient of the loss on that slice, and the slices' gradients are combined with one
`all_sum` per optimizer step. A slice's gradient is weighted by its share of what the loss averages over (examples
for the preference losses, completion tokens for SFT's per-token NLL), so the combined gradient is exactly the
single-process gradient of the global batch, up to float summation order, for losses that are such averages.
Slices can be uneven (in proportion to each rank's measured throughput) without biasing the average.

Rank 0 alone resumes from and writes checkpoints, and alone calls the metrics callback; the other ranks receive
its weights and optimizer state at the start, so ranks need no shared filesystem.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from realign.train.batches import NLL_WEIGHT, POLICY_LOGITS, Batch

if TYPE_CHECKING:  # loop.py imports this module lazily
    from realign.train.loop import TrainConfig, TrainResult

Layout = Literal["rows", "pairs"]
Weighting = Literal["examples", "tokens"]

# Arrays per all_sum call are concatenated up to this many bytes: few large messages (as nn.average_gradients).
ALL_REDUCE_BYTES = 32 * 1024**2


def world() -> mx.distributed.Group:
    """The group of ranks this process belongs to: all of them under `mlx.launch`, a group of 1 otherwise."""
    return mx.distributed.init()


def split_counts(n: int, shares: Sequence[float] | None, size: int) -> list[int]:
    """Units (examples or pairs) per rank out of `n`: in proportion to `shares` (throughput), at least 1 each.

    Largest-remainder rounding, ties to the faster rank then the lower rank, so every rank computes the same split.
    Each rank gets one unit first: every rank then runs the loss and reports the same metrics, and no rank idles.
    """
    if n < size:
        raise ValueError(f"a global batch of {n} cannot give each of {size} ranks an example; raise batch_size")
    weights = [1.0] * size if shares is None else [float(s) for s in shares]
    if len(weights) != size:
        raise ValueError(f"{len(weights)} shares for {size} ranks")
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise ValueError(f"shares must be finite and > 0: {list(weights)}")
    total, rest = sum(weights), n - size
    exact = [rest * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(size), key=lambda r: (-(exact[r] - counts[r]), -weights[r], r))
    for r in order[: rest - sum(counts)]:
        counts[r] += 1
    return [c + 1 for c in counts]


@dataclass(frozen=True)
class DataParallel:
    """How a global batch is cut between ranks and how much each slice's gradient counts.

    layout: "rows" (each row an example: SFT) or "pairs" (rows [0, B) chosen, [B, 2B) rejected, with per-pair
    arrays such as the reference log-probs: the preference losses and the reward model).
    weight_by: what the loss averages over, so the combination of slices equals the global loss: "tokens" for a
    per-token mean (SFT's NLL), "examples" for a per-example mean (DPO, reward model). The preference losses that add
    a token mean to the per-example one (RPO, ORPO, CPO's chosen-token NLL) get a per-slice NLL_WEIGHT in the slice,
    so that term too sums to the global batch's token mean.
    shares: relative throughput per rank (the calibration the shard planner uses); None splits evenly.
    """

    group: mx.distributed.Group
    layout: Layout = "rows"
    weight_by: Weighting = "examples"
    shares: tuple[float, ...] | None = None

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def units(self, batch: Batch) -> int:
        rows = batch["tokens"].shape[0]
        return rows // 2 if self.layout == "pairs" else rows

    def counts(self, batch: Batch) -> list[int]:
        return split_counts(self.units(batch), self.shares, self.size)

    def take(self, batch: Batch, start: int, n: int) -> Batch:
        """Units [start, start + n) of a global batch (rows keep the global padding: same shapes per row)."""
        units = self.units(batch)
        out = {}
        for key, value in batch.items():
            if self.layout == "pairs" and value.shape[0] == 2 * units:
                out[key] = mx.concatenate([value[start : start + n], value[units + start : units + start + n]])
            elif value.shape[0] == units:
                out[key] = value[start : start + n]
            else:
                raise ValueError(f"batch array '{key}' has {value.shape[0]} rows, not {units} or {2 * units}")
        return out

    def weight(self, batch: Batch) -> float:
        if self.weight_by == "tokens":
            return float(batch["mask"].sum().item())
        return float(self.units(batch))

    def mine(self, batch: Batch) -> tuple[Batch, float]:
        """This rank's slice of a global batch and the fraction of the global loss it carries."""
        counts = self.counts(batch)
        start = sum(counts[: self.rank])
        part = self.take(batch, start, counts[self.rank])
        total = self.weight(batch)
        # An all-masked global batch (tokens weighting) has no loss to share: weigh by examples instead.
        frac = self.weight(part) / total if total > 0 else counts[self.rank] / sum(counts)
        if self.layout == "pairs" and self.weight_by == "examples":
            # The chosen-token NLL (RPO, ORPO, CPO) is a token mean inside a per-example loss: scaled by
            # (this slice's share of the chosen tokens) / (its share of the examples), frac * that is the token share.
            chosen = float(batch["mask"][: self.units(batch)].sum().item())
            mine = float(part["mask"][: counts[self.rank]].sum().item())
            part[NLL_WEIGHT] = mx.array(mine / chosen / frac if chosen > 0 and frac > 0 else 1.0)
        return part, frac


# --- collectives -------------------------------------------------------------------------


def sum_tree(tree, group: mx.distributed.Group):
    """Element-wise sum of a tree of arrays over ranks, a few large all_sum calls per dtype (not one per array)."""
    flat = tree_flatten(tree)
    if group.size() == 1 or not flat:
        return tree
    out: dict[str, mx.array] = {}
    by_dtype: dict = {}
    # In key order: a tree's insertion order can differ between ranks (an optimizer state read from a checkpoint on
    # rank 0, built by init elsewhere), and the ranks' arrays must meet their counterparts in the sum.
    for key, value in sorted(flat, key=lambda kv: kv[0]):
        by_dtype.setdefault(value.dtype, []).append((key, value))
    for _, items in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
        chunk: list = []
        nbytes = 0
        for i, (key, value) in enumerate(items):
            chunk.append((key, value))
            nbytes += value.nbytes
            if nbytes >= ALL_REDUCE_BYTES or i == len(items) - 1:
                joined = mx.concatenate([v.reshape(-1) for _, v in chunk])
                summed = mx.distributed.all_sum(joined, group=group)
                # Evaluated here, one collective at a time: left lazy, the ranks' schedulers may run the pending
                # all_sums in different orders and pair one rank's chunk with another's (measured: garbage sums).
                mx.eval(summed)
                offsets = [0]
                for _, v in chunk:
                    offsets.append(offsets[-1] + v.size)
                for (k, v), a, b in zip(chunk, offsets[:-1], offsets[1:]):
                    out[k] = summed[a:b].reshape(v.shape)
                chunk, nbytes = [], 0
    return tree_unflatten([(k, out[k]) for k, _ in flat])


def broadcast_tree(tree, group: mx.distributed.Group, root: int = 0):
    """Rank `root`'s values of a tree of arrays on every rank (an all_sum to which the others add zeros)."""
    if group.size() == 1:
        return tree
    mine = group.rank() == root
    return sum_tree(tree_map(lambda x: x if mine else mx.zeros_like(x), tree), group)


def rank_divergence(tree, group: mx.distributed.Group) -> float:
    """Largest absolute difference between any rank's arrays and rank 0's (0.0 when the ranks agree bit for bit)."""
    if group.size() == 1:
        return 0.0
    ref = broadcast_tree(tree, group)
    local = max(
        (
            mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()
            for (_, a), (_, b) in zip(tree_flatten(tree), tree_flatten(ref))
        ),
        default=0.0,
    )
    return float(mx.distributed.all_max(mx.array([local]), group=group).item())


def gather_ragged(values: np.ndarray, counts: Sequence[int], group: mx.distributed.Group) -> np.ndarray:
    """Every rank's 1-D `values` (rank r holds counts[r] of them), concatenated in rank order, on every rank.

    all_gather needs one shape everywhere: each rank pads to the largest count and the padding is cut off by count
    (not by value: NaN is a legitimate value, an unscored reward). float64 end to end, so nothing is rounded.
    """
    values = np.asarray(values, dtype=np.float64)
    if group.size() == 1:
        return values
    if len(values) != counts[group.rank()]:
        raise ValueError(f"rank {group.rank()} has {len(values)} values, counts say {counts[group.rank()]}")
    width = max(counts)
    padded = np.zeros(width, dtype=np.float64)
    padded[: len(values)] = values
    # as raw 32-bit words: mx.array() would make float64 float32, and every backend moves uint32
    words = mx.array(padded.view(np.uint32))
    gathered = np.array(mx.distributed.all_gather(words, group=group)).view(np.float64).reshape(group.size(), width)
    return np.concatenate([gathered[r, :n] for r, n in enumerate(counts)])


def sync_start(model: nn.Module, optimizer: optim.Optimizer, start: int, group: mx.distributed.Group) -> int:
    """Rank 0's step, trainable weights and optimizer state on every rank (rank 0 alone resumed from disk): one
    starting point, and no shared disk needed. Returns rank 0's step."""
    start = int(mx.distributed.all_sum(mx.array(start if group.rank() == 0 else 0), group=group).item())
    optimizer.init(model.trainable_parameters())
    # Rank 0's tree is read from disk, the others' built by init: evaluate before communicating, so every rank's
    # graph is plain arrays and the collectives run in the order they are called.
    mx.eval(model.parameters(), optimizer.state)
    model.update(broadcast_tree(model.trainable_parameters(), group))
    mx.eval(model.parameters())
    optimizer.state = broadcast_tree(optimizer.state, group)
    mx.eval(optimizer.state)
    return start


def global_gradient(model: nn.Module, loss_fn: Callable, batch: Batch, parallel: DataParallel | None):
    """(loss, gradient) of `loss_fn` on a whole global batch: this rank's slice, weighted, summed over the ranks.

    parallel None: the single-process value, the reference the ranks' sum must match.
    """
    value_and_grad = nn.value_and_grad(model, lambda b: loss_fn(model, b))
    if parallel is None or parallel.size == 1:
        (loss, _), grads = value_and_grad(batch)
        return loss, grads
    part, frac = parallel.mine(batch)
    (loss, _), grads = value_and_grad(part)
    return sum_tree((loss * frac, tree_map(lambda g: g * frac, grads)), parallel.group)


# --- the data-parallel loop ----------------------------------------------------------------


def train_parallel(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], tuple[mx.array, dict]],
    batch_at: Callable[[int], Batch],
    cfg: TrainConfig,
    parallel: DataParallel,
    *,
    out_dir: str | Path | None = None,
    reference: nn.Module | None = None,
    callback: Callable[[dict], None] | None = None,
    resume_key: str | None = None,
    measure: Callable | None = None,
) -> TrainResult:
    """`realign.train.loop.train` across the ranks of `parallel.group` (see the module docstring).

    Same arguments and result; rows also carry, per rank, the seconds it computed (compute_s/rankN) and waited for
    the slowest rank (wait_s/rankN), and the seconds of the gradient all_sum (comm_s). Dropout masks are drawn per
    slice, so with dropout > 0 the ranks' run differs from a single process's in its random draws.
    """
    from realign.train.loop import TrainResult, make_optimizer, resume_checkpoint, save_checkpoint

    group, rank, size = parallel.group, parallel.rank, parallel.size
    optimizer = make_optimizer(cfg)
    ckpt_root = Path(out_dir) / "checkpoints" if out_dir and rank == 0 else None
    start, history, warning = 0, [], ""
    if rank == 0:
        start, history, warning = resume_checkpoint(ckpt_root, model, optimizer, cfg, resume_key)
    start = sync_start(model, optimizer, start, group)
    resumed = start

    value_and_grad = nn.value_and_grad(model, lambda b: loss_fn(model, b))

    def step_with_logits(batch: Batch):
        (_, metrics), grads = value_and_grad(batch)
        logits = metrics.pop(POLICY_LOGITS, None)
        return metrics, grads, logits

    def step_without_logits(batch: Batch):
        metrics, grads, _ = step_with_logits(batch)
        return metrics, grads

    if cfg.compile:
        # Only the gradient step is compiled: the all_sum and the update run after it, outside the graph.
        state = [model.state, mx.random.state]
        step_with_logits = mx.compile(step_with_logits, inputs=state, outputs=state)
        step_without_logits = mx.compile(step_without_logits, inputs=state, outputs=state)

    result = TrainResult(
        steps_done=start, stopped="completed", history=history, resumed_from=resumed, resume_warning=warning
    )
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        mx.random.seed((cfg.seed * 1_000_003 + step) % 2**32)
        measuring = measure is not None and ((step + 1) % cfg.metrics_every == 0 or step + 1 == cfg.steps)
        acc, sums, ntoks, logits, part, frac = None, {}, 0.0, None, None, 0.0
        for k in range(cfg.grad_accum):
            batch = batch_at(step * cfg.grad_accum + k)
            ntoks += float(batch["mask"].sum().item())  # the global batch's, as a single process counts them
            part, frac = parallel.mine(batch)
            scale = frac / cfg.grad_accum
            if measuring and k == cfg.grad_accum - 1:
                metrics, grads, logits = step_with_logits(part)
            else:
                metrics, grads = step_without_logits(part)
            grads = tree_map(lambda g: g * scale, grads)
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + v * scale
            mx.eval(acc, sums)
        t1 = time.perf_counter()
        # A one-element all_sum is a barrier: the time in it is this rank waiting for the slowest one.
        mx.eval(mx.distributed.all_sum(mx.zeros(1), group=group))
        t2 = time.perf_counter()
        names = sorted(sums)
        acc, summed = sum_tree((acc, mx.stack([sums[n] for n in names])), group)
        mx.eval(acc, summed)
        t3 = time.perf_counter()
        grad_norm = None
        if cfg.max_grad_norm is not None:
            acc, grad_norm = optim.clip_grad_norm(acc, cfg.max_grad_norm)
        optimizer.update(model, acc)
        mx.eval(model.parameters(), optimizer.state)
        lr = (
            optimizer.learning_rate.item()
            if isinstance(optimizer.learning_rate, mx.array)
            else float(optimizer.learning_rate)
        )
        row = {"step": step + 1, "lr": lr}
        row.update({n: v for n, v in zip(names, summed.tolist())})
        if grad_norm is not None:
            row["grad_norm"] = grad_norm.item()
        if measuring:
            local = measure(model, part, reference, logits)
            keys = sorted(local)
            weighted = mx.distributed.all_sum(mx.array([local[k] * frac for k in keys]), group=group)
            row.update({k: v for k, v in zip(keys, weighted.tolist())})
        dt = time.perf_counter() - t0
        times = mx.distributed.all_gather(mx.array([t1 - t0, t2 - t1]), group=group).tolist()
        for r in range(size):
            row[f"compute_s/rank{r}"], row[f"wait_s/rank{r}"] = times[2 * r], times[2 * r + 1]
        row.update(
            {
                "comm_s": t3 - t2,
                "ranks": size,
                "tokens": ntoks,
                "seconds": dt,
                "tokens_per_s": ntoks / dt if dt > 0 else float("nan"),
            }
        )
        history.append(row)
        result.steps_done = step + 1
        if callback and rank == 0:
            callback(row)
        kl = row.get("kl", float("nan"))
        stop = cfg.kl_limit is not None and not math.isnan(kl) and kl > cfg.kl_limit
        if ckpt_root is not None and (
            (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == cfg.steps or stop
        ):
            result.checkpoint = save_checkpoint(ckpt_root, step + 1, model, optimizer, cfg, history, resume_key)
        if stop:
            result.stopped = "kl_limit"
            result.reason = f"KL {kl:.4f} > limit {cfg.kl_limit} at step {step + 1}"
            break
    return result
