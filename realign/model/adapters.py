"""A chain of LoRA stages as one adapter: what a LoRA run hands over instead of a fused model, when asked.

Each stage of a LoRA run trains adapters on top of the previous stage's (RUN/NN_stage/model, adapter_config.json naming
the model under it). Their updates add: W + s1 A1 B1 + s2 A2 B2 = W + [A1 A2] [s1 B1; s2 B2], so the chain is exactly
one adapter of rank r1 + r2 with scale 1 on the chain's root model. mlx-lm loads it as it loads any adapter
(`mlx_lm.load(ROOT, adapter_path=DIR)`), and it costs megabytes where a fused 7B copy costs 14 GB.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from realign.io import atomic_dir
from realign.model.load import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ModelLoadError, adapter_levels

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")  # "model.layers.3.self_attn.q_proj" -> 3, "self_attn.q_proj"


def merge_adapter_chain(path: str | os.PathLike, out_dir: str | os.PathLike, base_reference: str | None = None) -> Path:
    """Write the chain of adapters ending at `path` as one mlx-lm adapter on the chain's root model.

    Ranks are stacked (each stage's scale folded into its B) and padded with zeros to the largest total rank, since
    mlx-lm gives every adapted layer one rank; the blocks adapted are the last `num_layers` of the widest stage.
    base_reference: the `model` field to write (default: the root's absolute path). ModelLoadError when `path` is not
    an adapter directory or a stage is not LoRA. Written atomically; returns out_dir.
    """
    import mlx.core as mx

    levels, root = adapter_levels(path)
    if not levels:
        raise ModelLoadError(f"{path}: not an adapter directory (no {ADAPTER_CONFIG}); nothing to merge")
    parts: dict[str, list[tuple[mx.array, mx.array]]] = {}
    keys: set[str] = set()
    num_layers = 0
    for level in levels:
        cfg = json.loads((level / ADAPTER_CONFIG).read_text())
        if cfg.get("fine_tune_type", "lora") != "lora":
            raise ModelLoadError(f"{level / ADAPTER_CONFIG}: fine_tune_type {cfg['fine_tune_type']!r}, expected lora")
        lora = cfg["lora_parameters"]
        keys.update(lora.get("keys") or [])
        num_layers = max(num_layers, int(cfg["num_layers"]))
        weights = mx.load(str(level / ADAPTER_WEIGHTS))
        for name in (k.removesuffix(".lora_a") for k in weights if k.endswith(".lora_a")):
            a, b = weights[f"{name}.lora_a"], weights[f"{name}.lora_b"]
            parts.setdefault(name, []).append((a, (lora["scale"] * b).astype(b.dtype)))
    # A level whose config lists no keys (mlx-lm's "every linear layer") still names its layers in its weights.
    blocks = [(int(m.group(1)), m.group(2)) for m in map(_BLOCK.search, parts) if m]
    keys.update(k for _, k in blocks)
    total = json.loads((root / "config.json").read_text()).get("num_hidden_layers") if blocks else None
    if total and blocks:
        num_layers = max(num_layers, total - min(i for i, _ in blocks))
    rank = max(sum(a.shape[1] for a, _ in p) for p in parts.values())
    merged = {}
    for name, p in parts.items():
        a = mx.concatenate([x for x, _ in p], axis=1)
        b = mx.concatenate([y for _, y in p], axis=0)
        pad = rank - a.shape[1]  # zero columns of A and rows of B add nothing
        merged[f"{name}.lora_a"] = mx.pad(a, [(0, 0), (0, pad)])
        merged[f"{name}.lora_b"] = mx.pad(b, [(0, pad), (0, 0)])
    config = {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": 1.0, "dropout": 0.0, "keys": sorted(keys)},
        "model": base_reference or str(root.resolve()),
        "merged_from": [str(level) for level in levels],
    }
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / ADAPTER_WEIGHTS), merged, metadata={"format": "mlx"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return out
