"""Activation steering: add `strength * direction` to the residual stream after chosen transformer blocks.

Steering wraps the blocks of an mlx-lm model in place (`SteeredBlock` calls the original block and adds the offset
to what it returns); the model code itself is not forked, so any architecture whose blocks live in
`model.model.layers` (or `model.layers`) is steered the same way. Several steering vectors compose: vectors on the
same layer add up. `remove_steering` puts the original block objects back, so the model computes exactly what it
did before (bit for bit: no weight was touched). A steering vector is never a parameter of the model: it is not
trained, saved or counted. While a block is wrapped its parameters are named `layers.N.block.*`: remove the
steering before saving or training the model.

Spec strings (CLI): `VEC.safetensors:STRENGTH[@LAYER]`, e.g. `refusal.safetensors:-4@1`; without @LAYER the file's
chosen layer (its metadata) is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn


def model_blocks(model) -> list:
    """The list of transformer blocks of an mlx-lm model (the list object itself: wrapping edits it in place)."""
    inner = getattr(model, "model", None)
    blocks = getattr(inner, "layers", None) if inner is not None else None
    if blocks is None:
        blocks = getattr(model, "layers", None)
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(
            f"{type(model).__name__}: no transformer blocks found at model.model.layers or model.layers; steering "
            "and activation capture need an mlx-lm decoder model"
        )
    return blocks


class _Constant:
    """Holds an array outside mlx's module tree (an mx.array attribute of a Module would become a parameter)."""

    def __init__(self, value: mx.array):
        self.value = value


class BlockWrapper(nn.Module):
    """A module standing in for the transformer block it wraps (`self.block`): attributes it does not have itself
    are the block's. mlx-lm model code reads attributes of its blocks beside calling them (llama.py's
    `layer.use_sliding` in the forward pass and make_cache, qwen3_next's `layer.is_linear`), so a wrapper that
    hid them would break those models."""

    def __getattr__(self, key: str):
        try:
            return super().__getattr__(key)  # the wrapper's own children and parameters (mlx's Module is a dict)
        except AttributeError:
            block = self.get("block")  # dict lookup: no recursion before `block` is set
            if block is None:
                raise
            return getattr(block, key)


class SteeredBlock(BlockWrapper):
    """A transformer block whose output gets `offset` added at every position: h = block(x, ...) + offset."""

    def __init__(self, block: nn.Module, offset: mx.array):
        super().__init__()
        self.block = block
        self._offset = _Constant(offset)

    @property
    def offset(self) -> mx.array:
        return self._offset.value

    def __call__(self, x: mx.array, *args, **kwargs) -> mx.array:
        h = self.block(x, *args, **kwargs)
        return h + self._offset.value.astype(h.dtype)


@dataclass(frozen=True)
class SteeringVector:
    """`strength` times the unit `direction` [hidden], added after block `layer` (0-based)."""

    direction: mx.array
    strength: float
    layer: int

    def offset(self) -> mx.array:
        """strength * direction / |direction| (float32); ValueError for a zero direction (it has no unit vector)."""
        d = self.direction.astype(mx.float32)
        norm = mx.linalg.norm(d)
        if float(norm.item()) == 0.0:
            raise ValueError(f"steering direction for layer {self.layer} is zero: it has no direction to steer along")
        return self.strength * d / norm


def apply_steering(model, vectors: Sequence[SteeringVector]) -> None:
    """Wrap the blocks `vectors` name, in place; vectors on one layer are summed. A model already steered raises
    (remove the steering first): two wrappers on one block would make removing them order-dependent."""
    blocks = model_blocks(model)
    if any(isinstance(b, SteeredBlock) for b in blocks):
        raise ValueError("the model is already steered; call remove_steering(model) before steering it again")
    hidden = None
    offsets: dict[int, mx.array] = {}
    for v in vectors:
        if not 0 <= v.layer < len(blocks):
            raise ValueError(f"steering layer {v.layer} is outside the model's blocks 0..{len(blocks) - 1}")
        hidden = hidden or _hidden_size(model)
        if v.direction.shape != (hidden,):
            raise ValueError(
                f"steering direction has shape {tuple(v.direction.shape)}; the model's hidden size is {hidden}"
            )
        offsets[v.layer] = offsets[v.layer] + v.offset() if v.layer in offsets else v.offset()
    for layer, offset in offsets.items():
        blocks[layer] = SteeredBlock(blocks[layer], offset)


def remove_steering(model) -> int:
    """Put the original blocks back, in place; returns how many were steered."""
    blocks = model_blocks(model)
    n = 0
    for i, b in enumerate(blocks):
        if isinstance(b, SteeredBlock):
            blocks[i] = b.block
            n += 1
    return n


@contextmanager
def steered(model, vectors: Sequence[SteeringVector]) -> Iterator[None]:
    """Steer `model` inside the block; the original blocks come back however it ends."""
    apply_steering(model, vectors)
    try:
        yield
    finally:
        remove_steering(model)


def _hidden_size(model) -> int:
    """The model's config says it (`model.args.hidden_size`); else its token embedding: a QuantizedEmbedding's weight
    packs 32 // bits values into each uint32, so its last dimension is hidden * bits / 32."""
    blocks = model_blocks(model)
    args = getattr(model, "args", None)
    if args is not None and getattr(args, "hidden_size", None):
        return int(args.hidden_size)
    inner = getattr(model, "model", model)
    emb = getattr(inner, "embed_tokens", None)
    if isinstance(emb, nn.QuantizedEmbedding):
        return int(emb.weight.shape[-1]) * 32 // int(emb.bits)
    if emb is not None:
        return int(emb.weight.shape[-1])
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__} ({len(blocks)} blocks)")


_SPEC = re.compile(r"^(?P<path>.+?):(?P<strength>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)(@(?P<layer>\d+))?$")


def parse_steer_spec(spec: str) -> tuple[Path, float, int | None]:
    """'VEC.safetensors:STRENGTH[@LAYER]' -> (path, strength, layer or None). ValueError saying the expected form."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(
            f"--steer {spec!r}: expected VEC.safetensors:STRENGTH[@LAYER], e.g. refusal.safetensors:-4@1 (a number "
            "after the colon; the layer, 0-based, after @)"
        )
    layer = m.group("layer")
    return Path(m.group("path")), float(m.group("strength")), int(layer) if layer is not None else None


def load_steering(specs: Sequence[str]) -> list[SteeringVector]:
    """Steering vectors from spec strings: each file's direction at the given layer (or the file's chosen layer)."""
    from realign.steer.directions import load_directions

    vectors = []
    for spec in specs:
        path, strength, layer = parse_steer_spec(spec)
        saved = load_directions(path)
        layer = saved.chosen_layer if layer is None else layer
        if layer not in saved.directions:
            raise ValueError(
                f"--steer {spec!r}: {path} holds directions for layers {sorted(saved.directions)}, not {layer}; "
                "name one of those after @"
            )
        vectors.append(SteeringVector(saved.directions[layer], strength, layer))
    return vectors
