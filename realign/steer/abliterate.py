"""Abliteration: remove a direction from everything that writes to the residual stream, in the weights.

For a unit direction r [hidden], every matrix that writes to the residual stream is orthogonalised so nothing it
writes has a component along r:
  - the token embeddings E [vocab, hidden]:            E' = E - (E r) r^T
  - each block's attention output and MLP down projection, mlx Linear weights W [hidden, in] (y = x W^T):
                                                        W' = W - r (r^T W),   and a bias b' = b - r (r . b)
After that the residual stream (the sum of those writes) has no component along r at any layer, so what the model
read from r (a refusal, a style) is gone, while the rest of each matrix is unchanged. The arithmetic is float32
(in place, each matrix cast back to its own dtype). With tied input/output embeddings the output head is the same
matrix and changes with it (as in the reference PyTorch implementations).

How orthogonal the result is is reported twice: for the float32 matrices before the cast (what the arithmetic
achieved: ~1e-7 of the largest weight) and for the stored matrices in their own dtype. A bf16 or fp16 matrix
cannot hold the exact projection: rounding each entry to 8 (bf16) or 11 (fp16) significant bits puts back a
component along r of up to ~1e-3 of the largest weight, which no arithmetic can remove; that number is rounding,
not a failure to abliterate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from realign.io import write_json
from realign.steer.steering import model_blocks

# Residual-stream writers inside a block, by the names mlx-lm's Llama-family models (Qwen, Llama, Mistral) use.
WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def _unit(direction: mx.array) -> mx.array:
    r = direction.astype(mx.float32)
    norm = mx.linalg.norm(r)
    if float(norm.item()) == 0.0:
        raise ValueError("the direction is zero: nothing to project out")
    return r / norm


def _module(root: nn.Module, dotted: str) -> nn.Module | None:
    m = root
    for part in dotted.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def residual_writers(model, embeddings: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module writing to the residual stream: the token embedding (when `embeddings`) and
    each block's attention output and MLP down projection. ValueError for quantised weights (dequantise first: a
    projection cannot be applied to 4-bit codes) and for blocks without those names."""
    out = []
    inner = getattr(model, "model", model)
    if embeddings:
        emb = getattr(inner, "embed_tokens", None)
        if emb is None:
            raise ValueError(f"{type(model).__name__}: no embed_tokens; pass embeddings=False to leave them out")
        out.append(("model.embed_tokens", emb))
    for i, block in enumerate(model_blocks(model)):
        for name in WRITERS:
            m = _module(block, name)
            if m is None:
                raise ValueError(
                    f"block {i} has no {name}: abliteration knows the Llama-family names {', '.join(WRITERS)}"
                )
            out.append((f"model.layers.{i}.{name}", m))
    quantised = [n for n, m in out if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if quantised:
        raise ValueError(
            f"{quantised[0]} (and {len(quantised) - 1} more) are quantised: abliterate the full-precision model "
            "(e.g. mlx_lm.convert without -q, or `mlx_lm.fuse --dequantize`) and quantise the result afterwards"
        )
    return out


def projection_onto(module: nn.Module, r: mx.array) -> float:
    """Largest |component along unit r| of what `module` writes: max |E r| for an embedding, max |r^T W| (and
    |r . b|) for a linear layer."""
    bias = module.bias if "bias" in module else None
    return _projection(module.weight, bias, r, rows=isinstance(module, nn.Embedding))


def _projection(weight: mx.array, bias: mx.array | None, r: mx.array, rows: bool) -> float:
    """projection_onto for a weight (rows: an embedding's [vocab, hidden]; else a Linear's [hidden, in]) and bias."""
    w = weight.astype(mx.float32)
    if rows:
        return float(mx.abs(w @ r).max().item())
    value = float(mx.abs(r @ w).max().item())
    if bias is not None:
        value = max(value, abs(float((r @ bias.astype(mx.float32)).item())))
    return value


def orthogonalise_rows(weight: mx.array, r: mx.array) -> mx.array:
    """E - (E r) r^T: each row (an embedding vector) without its component along unit r (float32)."""
    w = weight.astype(mx.float32)
    return w - mx.outer(w @ r, r)


def orthogonalise_output(weight: mx.array, r: mx.array) -> mx.array:
    """W - r (r^T W): a Linear weight [out=hidden, in] whose outputs have no component along unit r (float32)."""
    w = weight.astype(mx.float32)
    return w - mx.outer(r, r @ w)


@dataclass
class AbliterationReport:
    """What was orthogonalised: the matrices, the largest projection on r before and after (absolute, and after
    relative to the largest weight), the layer the direction came from. `max_projection_after` and
    `relative_projection_after` are of the float32 result before the cast back (the arithmetic's);
    `relative_projection_stored` of the matrices as stored, in `dtypes` (for bf16/fp16, that dtype's rounding:
    `note`)."""

    matrices: list[str]
    max_projection_before: float
    max_projection_after: float
    relative_projection_after: float
    direction_layer: int | None = None
    relative_projection_stored: float | None = None
    dtypes: list[str] | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def abliterate(model, direction: mx.array, *, embeddings: bool = True, layer: int | None = None) -> AbliterationReport:
    """Orthogonalise every residual-stream writer of `model` against `direction`, in place (see the module
    docstring); returns the projections before and after."""
    r = _unit(direction)
    writers = residual_writers(model, embeddings)
    before = max(projection_onto(m, r) for _, m in writers)
    largest, after = 0.0, 0.0
    for _, m in writers:
        largest = max(largest, float(mx.abs(m.weight.astype(mx.float32)).max().item()))
        rows, new_bias = isinstance(m, nn.Embedding), None
        if rows:
            new = orthogonalise_rows(m.weight, r)
        else:
            new = orthogonalise_output(m.weight, r)
            if "bias" in m:
                b = m.bias.astype(mx.float32)
                new_bias = b - r * (r @ b)
                m.bias = new_bias.astype(m.bias.dtype)
        after = max(after, _projection(new, new_bias, r, rows))  # float32, before the cast back
        m.weight = new.astype(m.weight.dtype)
        mx.eval(m.parameters())
    stored = max(projection_onto(m, r) for _, m in writers)
    dtypes = sorted({str(m.weight.dtype).removeprefix("mlx.core.") for _, m in writers})
    rounded = [d for d in dtypes if d in ("bfloat16", "float16")]
    note = (
        f"the stored projection is {'/'.join(rounded)} rounding of the exactly orthogonal float32 matrices"
        if rounded
        else ""
    )
    return AbliterationReport(
        [n for n, _ in writers],
        before,
        after,
        after / largest if largest else 0.0,
        layer,
        stored / largest if largest else 0.0,
        dtypes,
        note,
    )


def save_abliterated(model, source_dir: str | Path, out_dir: str | Path, report: AbliterationReport) -> Path:
    """The abliterated model as a full model directory mlx_lm.load reads (mlx-lm's save_model: weights, config and
    tokenizer files of `source_dir`), with abliteration.json saying what was done. Atomic."""
    from realign.model.load import save_model

    out = save_model(model, source_dir, out_dir, fuse=True)
    write_json(Path(out) / "abliteration.json", {**report.as_dict(), "source_model": str(source_dir)})
    return out


def relative_projection(model, direction: mx.array, embeddings: bool = True) -> float:
    """Largest |component along unit `direction`| written by any residual writer of `model`, over the largest
    |weight| among them, of the weights as they are (their own dtype): 0 for an exactly abliterated model, ~1e-7
    after float32 rounding, up to ~1e-3 for bf16 weights (rounding: see the module docstring)."""
    r = _unit(direction)
    writers = residual_writers(model, embeddings)
    largest = max(float(mx.abs(m.weight.astype(mx.float32)).max().item()) for _, m in writers)
    return max(projection_onto(m, r) for _, m in writers) / largest if largest else 0.0
