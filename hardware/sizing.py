"""How big a model is and how much memory a job on it needs.

Parameter counts come from a model's config.json (or a request such as "Qwen 7B");
memory = weights + KV cache + activations for the batch. Units: bytes and GB (1e9 bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float8": 1.0}


@dataclass
class ModelSize:
    """params: parameter count; bytes_per_param: storage per weight (quantisation included).
    Architecture fields are None when only the size is known (from a request)."""

    params: float
    bytes_per_param: float = 2.0
    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None

    @property
    def params_b(self) -> float:
        return self.params / 1e9


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBmM])\b")


def parse_size(request: str) -> float:
    """Billions of parameters named in a request: "Qwen 7B" -> 7.0, "1.5b" -> 1.5, "560M" -> 0.56."""
    m = _SIZE.search(request)
    if not m:
        raise ValueError(f"no model size in {request!r}; write it as e.g. '7B', '70B' or '560M'")
    value = float(m.group(1))
    return value if m.group(2).lower() == "b" else value / 1000


def size_from_config(cfg: dict) -> ModelSize:
    """Parameter count and storage of a decoder-only transformer from its config.json.

    Counts embeddings (x2 when the output head is untied), per layer q/k/v/o projections
    (with biases when the model has them, as Qwen2 does), a gated MLP (3 matrices) and two
    norms, and the final norm. Quantised weights: bits/8 bytes plus a 16-bit scale and bias per group.
    """
    h, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    inter = cfg["intermediate_size"]
    qkv_bias = cfg.get("model_type") in ("qwen2",) or cfg.get("attention_bias", False)
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h + (heads * hd + 2 * kv * hd if qkv_bias else 0)
    per_layer = attn + 3 * h * inter + 2 * h
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    params = embed + layers * per_layer + h
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if q and q.get("bits"):
        bytes_pp = q["bits"] / 8 + 4 / q.get("group_size", 64)
    else:
        bytes_pp = DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2.0)
    return ModelSize(params, bytes_pp, layers, h, inter, kv, hd)


@dataclass
class MemoryEstimate:
    weights_gb: float
    kv_cache_gb: float | None  # None: architecture unknown, not estimated
    activations_gb: float | None
    total_gb: float
    note: str = ""


def memory_estimate(size: ModelSize, batch: int, seq_len: int, *, kv_bytes: float = 2.0) -> MemoryEstimate:
    """Inference memory for `batch` sequences of `seq_len` tokens.

    weights = params x bytes_per_param; KV cache = 2 (K and V) x layers x kv_heads x head_dim x seq x batch x kv_bytes;
    activations = batch x seq x (hidden + intermediate) x 2 bytes (one layer's working set at a time).
    With only a parameter count, KV cache and activations cannot be computed and are reported as such.
    """
    weights = size.params * size.bytes_per_param
    if size.layers is None:
        return MemoryEstimate(
            weights / 1e9,
            None,
            None,
            weights / 1e9,
            note="architecture unknown (size from a request): weights only; KV cache and activations not estimated",
        )
    kv = 2 * size.layers * size.kv_heads * size.head_dim * seq_len * batch * kv_bytes
    act = batch * seq_len * (size.hidden + size.intermediate) * 2
    return MemoryEstimate(weights / 1e9, kv / 1e9, act / 1e9, (weights + kv + act) / 1e9)
