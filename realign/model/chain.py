"""LoRA updates on a quantised layer, kept beside it instead of fused into it.

Fusing an adapter into a 4-bit layer re-quantises base + delta onto a new grid, and on the 4-bit tiny model that
rounding outweighed the effect of trained-size adapters (tests/test_models.py); dequantising the adapted layers instead
holds them at 16-bit, about 3.5x their size. A chained layer keeps the quantised weights and adds every earlier stage's
low-rank update exactly, at rank-sized cost, and a later LoRA stage trains on top of it as on any quantised layer.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class ChainedQuantizedLinear(nn.QuantizedLinear):
    """y = Wq x + b + (x A) B: a quantised linear layer plus the frozen updates of earlier LoRA stages, each stage's
    rank stacked in A and B with its scale folded into B."""

    @classmethod
    def from_lora(cls, lora) -> ChainedQuantizedLinear:
        """The layer under an mlx-lm LoRALinear with that adapter folded into its chain (exactly, not fused)."""
        base = lora.linear
        a, b = lora.lora_a, lora.scale * lora.lora_b
        if isinstance(base, ChainedQuantizedLinear):
            a = mx.concatenate([base.chain_a, a], axis=1)
            b = mx.concatenate([base.chain_b, b], axis=0)
        out_dims, in_dims = base.weight.shape[0], a.shape[0]
        # MLX is lazy: the random weights the constructor draws are replaced before anything evaluates them
        layer = cls(in_dims, out_dims, bias="bias" in base, group_size=base.group_size, bits=base.bits, mode=base.mode)
        layer.weight, layer.scales, layer.biases = base.weight, base.scales, base.get("biases")
        if "bias" in base:
            layer.bias = base.bias
        layer.chain_a, layer.chain_b = a, b
        layer.freeze()
        return layer

    def __call__(self, x):
        return super().__call__(x) + ((x @ self.chain_a) @ self.chain_b).astype(x.dtype)

    def to_lora(self, r: int, scale: float, dropout: float):
        """What mlx-lm's linear_to_lora_layers calls: a new trainable adapter on top of this layer and its chain."""
        from mlx_lm.tuner.lora import LoRALinear

        return LoRALinear.from_base(self, r=r, scale=scale, dropout=dropout)

    def dense(self) -> nn.Linear:
        """The layer at full precision with its updates added (exact): what a saved model holds, since mlx-lm loads
        plain and quantised layers only."""
        w = mx.dequantize(
            self.weight, self.scales, self.get("biases"), group_size=self.group_size, bits=self.bits, mode=self.mode
        )
        out_dims, in_dims = w.shape
        linear = nn.Linear(in_dims, out_dims, bias="bias" in self)
        linear.weight = w + (self.chain_a @ self.chain_b).T.astype(w.dtype)
        if "bias" in self:
            linear.bias = self.bias
        return linear
