"""Directions in the residual stream: the mean activation difference between two sets of prompts, per layer.

The activation of a prompt at a layer is the residual stream after that transformer block at the prompt's last
token (with the chat template, the last token of the assistant header: where the model decides how to answer).
The direction of a layer is mean(positive activations) - mean(negative activations). How well it separates the two
sets is measured on held-out prompts, never the ones it was computed from: project each held-out activation on the
unit direction and report (a) d', the standardised difference of the projections' means
(mean_pos - mean_neg) / sqrt((var_pos + var_neg) / 2), and (b) the held-out accuracy of the threshold halfway
between the two training means. The chosen layer is the one with the largest d'.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from realign.model.generate import prompt_tokens
from realign.steer.steering import BlockWrapper, model_blocks


class _Recorder(BlockWrapper):
    """A block that keeps its output rows at given positions (one per batch row) in `store` (its other attributes are
    the block's: see BlockWrapper)."""

    def __init__(self, block: nn.Module, positions: mx.array, store: list):
        super().__init__()
        self.block = block
        # a plain attribute: a tuple set through Module.__setattr__ would become a child of the module tree
        object.__setattr__(self, "_state", (positions, store))

    def __call__(self, x: mx.array, *args, **kwargs) -> mx.array:
        h = self.block(x, *args, **kwargs)
        positions, store = self._state
        store.append(h[mx.arange(h.shape[0]), positions].astype(mx.float32))
        return h


def last_token_activations(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    chat: bool = True,
    batch_size: int = 32,
) -> dict[int, np.ndarray]:
    """layer -> activations [len(prompts), hidden] (float32): the residual stream after each block in `layers`
    (default: every block) at each prompt's last token. Prompts are right-padded into batches; attention is causal,
    so padding after the last token cannot change it."""
    blocks = model_blocks(model)
    layers = list(range(len(blocks))) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} are outside the model's blocks 0..{len(blocks) - 1}")
    if not prompts:
        raise ValueError("no prompts to take activations from")
    encoded = [prompt_tokens(tokenizer, p, chat) for p in prompts]
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    originals = {layer: blocks[layer] for layer in layers}
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(e) for e in chunk)
            tokens = np.full((len(chunk), width), pad, dtype=np.int32)
            for b, ids in enumerate(chunk):
                tokens[b, : len(ids)] = ids
            positions = mx.array([len(e) - 1 for e in chunk])
            stores: dict[int, list] = {layer: [] for layer in layers}
            for layer in layers:
                blocks[layer] = _Recorder(originals[layer], positions, stores[layer])
            model(mx.array(tokens))
            for layer in layers:
                blocks[layer] = originals[layer]
                (acts,) = stores[layer]
                out[layer].append(np.array(acts))
    finally:
        for layer, block in originals.items():
            blocks[layer] = block
    return {layer: np.concatenate(chunks) for layer, chunks in out.items()}


def mean_difference(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """mean(positive) - mean(negative) over rows: [N, hidden], [M, hidden] -> [hidden] (float64)."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise ValueError(f"activations must be [rows, hidden] of one width, got {positive.shape} and {negative.shape}")
    if not len(positive) or not len(negative):
        raise ValueError("both sets need at least one activation")
    return positive.mean(axis=0) - negative.mean(axis=0)


def separation(
    direction: np.ndarray,
    train_positive: np.ndarray,
    train_negative: np.ndarray,
    heldout_positive: np.ndarray,
    heldout_negative: np.ndarray,
) -> dict[str, float]:
    """{'d_prime', 'accuracy'} of held-out projections on the unit `direction` (see the module docstring); the
    threshold is halfway between the training sets' mean projections. d' is NaN when both held-out sets have zero
    variance and equal means, +/-inf when they only differ in mean."""
    u = np.asarray(direction, dtype=float)
    u = u / np.linalg.norm(u)
    threshold = (np.mean(train_positive @ u) + np.mean(train_negative @ u)) / 2
    p, n = np.asarray(heldout_positive) @ u, np.asarray(heldout_negative) @ u
    pooled = np.sqrt((p.var() + n.var()) / 2)
    diff = p.mean() - n.mean()
    d_prime = diff / pooled if pooled > 0 else (np.sign(diff) * np.inf if diff else np.nan)
    correct = int((p > threshold).sum() + (n <= threshold).sum())
    return {"d_prime": float(d_prime), "accuracy": correct / (len(p) + len(n))}


@dataclass
class DirectionSet:
    """Unit directions per layer, how each separates held-out prompts, and the chosen layer."""

    directions: dict[int, mx.array]
    chosen_layer: int
    separation: dict[int, dict[str, float]] = field(default_factory=dict)  # layer -> d_prime, accuracy, norm
    source: dict = field(default_factory=dict)  # what they were computed from (files, counts, model)

    @property
    def direction(self) -> mx.array:
        """The chosen layer's unit direction."""
        return self.directions[self.chosen_layer]


def extract_directions(
    train_positive: dict[int, np.ndarray],
    train_negative: dict[int, np.ndarray],
    heldout_positive: dict[int, np.ndarray],
    heldout_negative: dict[int, np.ndarray],
    layer: int | None = None,
    projected: bool = False,
) -> DirectionSet:
    """Per layer: the unit mean-difference direction of the training activations and its held-out separation; the
    chosen layer is `layer` when given, else the one with the largest held-out d' (the first on a tie).

    projected: take out of each direction its component along the negative set's mean activation (d - (d . m) m,
    m the unit mean): "projected abliteration", which leaves what every prompt shares alone and so changes the
    answers to prompts without the behaviour less."""
    directions, seps = {}, {}
    for lyr in sorted(train_positive):
        d = mean_difference(train_positive[lyr], train_negative[lyr])
        if projected:
            m = np.asarray(train_negative[lyr], dtype=float).mean(axis=0)
            if np.linalg.norm(m) > 0:
                m = m / np.linalg.norm(m)
                d = d - (d @ m) * m
        norm = float(np.linalg.norm(d))
        if norm == 0:
            raise ValueError(f"layer {lyr}: the two prompt sets have identical mean activations (no direction)")
        directions[lyr] = mx.array((d / norm).astype(np.float32))
        s = separation(d, train_positive[lyr], train_negative[lyr], heldout_positive[lyr], heldout_negative[lyr])
        seps[lyr] = {**s, "norm": norm}
    if layer is None:
        layer = max(seps, key=lambda k: (np.nan_to_num(seps[k]["d_prime"], nan=-np.inf), -k))
    elif layer not in directions:
        raise ValueError(f"layer {layer} was not measured (layers {sorted(directions)})")
    return DirectionSet(directions, layer, seps)


def split_heldout(prompts: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) prompts: a seeded shuffle, `fraction` held out (at least one each). One seed permutes
    every list of one length the same way (twinned lists stay paired: see directions_from_prompts)."""
    if len(prompts) < 2:
        raise ValueError(f"{len(prompts)} prompt(s): need at least 2 to hold some out for the layer choice")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    k = min(len(order) - 1, max(1, round(len(order) * fraction)))
    return order[k:], order[:k]


def directions_from_prompts(
    model,
    tokenizer,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    layer: int | None = None,
    heldout_positive: Sequence[str] | None = None,
    heldout_negative: Sequence[str] | None = None,
    heldout_fraction: float = 0.25,
    seed: int = 0,
    chat: bool = True,
    projected: bool = False,
) -> DirectionSet:
    """Directions from two prompt sets (projected: see extract_directions). Without held-out sets,
    `heldout_fraction` of each is held out (seeded) for the separation and the layer choice; the directions come
    from the rest. Two lists of one length are split by the same permutation: they are often twins (pair i is one
    prompt with and without the behaviour, as the embedded demo's are), and independent splits would put the twin
    of a held-out prompt among the training prompts, so the held-out separation would be measured on prompts the
    direction had, in effect, seen."""
    if heldout_positive is None or heldout_negative is None:
        twins = len(negative) == len(positive)
        positive, heldout_positive = split_heldout(positive, heldout_fraction, seed)
        negative, heldout_negative = split_heldout(negative, heldout_fraction, seed if twins else seed + 1)
    acts = [
        last_token_activations(model, tokenizer, ps, layers=layers, chat=chat)
        for ps in (positive, negative, heldout_positive, heldout_negative)
    ]
    found = extract_directions(*acts, layer=layer, projected=projected)
    found.source = {
        "projected": projected,
        "positive": len(positive),
        "negative": len(negative),
        "heldout_positive": len(heldout_positive),
        "heldout_negative": len(heldout_negative),
        "position": "last prompt token" + (" (chat template)" if chat else ""),
    }
    return found


def save_directions(found: DirectionSet, path: str | Path) -> Path:
    """A safetensors file: one unit direction per layer ('layer.N'), the chosen layer, separations and source in its
    metadata. Written atomically."""
    path = Path(path)
    tensors = {f"layer.{k}": v for k, v in found.directions.items()}
    metadata = {
        "format": "realign-directions",
        "chosen_layer": str(found.chosen_layer),
        "separation": json.dumps({str(k): v for k, v in found.separation.items()}),
        "source": json.dumps(found.source),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # mx.save_safetensors writes by name only: write beside the target, then rename (same directory: atomic).
    tmp = path.with_name(f".{path.name}.partial.safetensors")
    try:
        mx.save_safetensors(str(tmp), tensors, metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_directions(path: str | Path) -> DirectionSet:
    """A DirectionSet written by save_directions; ValueError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected directions from `realign steer extract --out`)")
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as exc:  # mlx raises RuntimeError/ValueError for unreadable files
        raise ValueError(f"{path}: cannot be read as safetensors ({exc})") from exc
    if metadata.get("format") != "realign-directions":
        raise ValueError(f"{path}: not a directions file (metadata format is {metadata.get('format')!r})")
    directions = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")}
    seps = {int(k): v for k, v in json.loads(metadata.get("separation", "{}")).items()}
    return DirectionSet(directions, int(metadata["chosen_layer"]), seps, json.loads(metadata.get("source", "{}")))
