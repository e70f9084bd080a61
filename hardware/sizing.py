"""How big a model is and how much memory a job on it needs.

Parameter counts come from a model's config.json (or a request such as "Qwen 7B", whose architecture is then taken
from the nearest published shape in KNOWN_SHAPES). Memory depends on what the job does:

- inference (scoring, generation): weights + KV cache + one layer's working set of activations;
- LoRA training: frozen (possibly quantised) weights + fp32 adapters, their fp32 gradients and AdamW moments +
  the activations the backward pass keeps for the adapted layers;
- full fine-tuning: weights + gradients + AdamW moments, all in the weights' dtype + activations of every layer.

Units: bytes and GB (1e9 bytes). The formulas are in `memory_estimate`'s docstring.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float8": 1.0}

# mlx-lm's default group size (`mlx_lm.convert -q`): each group of 64 weights shares one scale and one bias.
QUANT_GROUP_SIZE = 64
# MLX affine quantisation stores a scale and a bias per group in the model's 16-bit dtype: 2 x 2 bytes per group.
QUANT_GROUP_OVERHEAD_BYTES = 4.0
QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize accepts

METHODS: tuple[str, ...] = ("inference", "lora", "full")

# realign's training defaults (realign/train/loop.py: TrainConfig.batch_size and .max_seq_len, LoRAConfig.rank and
# .layers; the tests check they agree). hardware/ does not import realign.train: that would load MLX to plan a job.
TRAIN_BATCH_SIZE = 8
TRAIN_SEQ_LEN = 512  # TrainConfig.max_seq_len: longer examples are cut, so no training sequence is longer
LORA_RANK = 8
LORA_LAYERS = -1  # all blocks; mlx-lm's own `mlx_lm.lora` CLI defaults to the last 16
# mlx-lm's linear_to_lora_layers without `keys` (realign passes none) adapts every Linear of a block:
# q, k, v, o and the gated MLP's gate, up and down projections.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ModelSize:
    """params: parameter count; bytes_per_param: storage per weight (quantisation included).

    Architecture fields are None when only the size is known (`model_size` fills them from KNOWN_SHAPES).
    quant_bits: bits per quantised weight (None: not quantised); arch_note: where an assumed architecture came from.
    """

    params: float
    bytes_per_param: float = 2.0
    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    heads: int | None = None
    vocab: int | None = None
    model_type: str | None = None
    quant_bits: int | None = None
    group_size: int | None = None
    arch_note: str = ""

    @property
    def params_b(self) -> float:
        return self.params / 1e9

    @property
    def quantised(self) -> bool:
        return self.quant_bits is not None

    @property
    def bits(self) -> float:
        """Bits per weight as stored, without the group scales: 4 for 4-bit, 16 for bf16, 32 for fp32."""
        return float(self.quant_bits) if self.quantised else self.bytes_per_param * 8

    @property
    def format(self) -> str:
        if self.quantised:
            return f"{self.quant_bits}bit"
        return {2.0: "bf16/fp16", 4.0: "fp32", 1.0: "fp8"}.get(self.bytes_per_param, f"{self.bits:g}-bit")

    def key(self) -> ModelKey:
        return ModelKey(self.model_type, self.params, self.bits)


@dataclass(frozen=True)
class ModelKey:
    """What a measurement (a calibration) was taken on: architecture, parameter count, bits per weight.

    model_type is config.json's ("llama", "qwen2"); None when the model is only a size named in a request.
    """

    model_type: str | None
    params: float
    bits: float

    # A size named in a request is rounded ("70B" for Llama 3.1 70B's 70.55B): 5% covers that, not 7B vs 8B.
    PARAMS_TOLERANCE = 0.05

    def matches(self, other: ModelKey) -> bool:
        """Same bits per weight, parameter counts within 5%, and the same model_type where both name one."""
        same_type = self.model_type is None or other.model_type is None or self.model_type == other.model_type
        close = abs(self.params - other.params) <= self.PARAMS_TOLERANCE * max(self.params, other.params)
        return same_type and close and self.bits == other.bits

    def describe(self) -> str:
        return f"{self.model_type or 'any architecture'}, {self.params / 1e9:.3g}B parameters, {self.bits:g}-bit"

    def as_dict(self) -> dict:
        return {"model_type": self.model_type, "params": self.params, "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> ModelKey:
        return cls(d.get("model_type"), float(d["params"]), float(d["bits"]))


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
    size = ModelSize(params, 2.0, layers, h, inter, kv, hd, heads=heads, vocab=vocab, model_type=cfg.get("model_type"))
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if q and q.get("bits"):
        return quantise(size, int(q["bits"]), q.get("group_size", QUANT_GROUP_SIZE))
    return replace(size, bytes_per_param=DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2.0))


def quantise(size: ModelSize, bits: int, group_size: int = QUANT_GROUP_SIZE) -> ModelSize:
    """The model stored at `bits` per weight with MLX affine quantisation: bits/8 bytes per weight plus a 16-bit scale
    and a 16-bit bias per group of `group_size` weights (4 bytes / 64 = 0.0625 bytes per weight at mlx-lm's default).

    Every parameter is counted at the quantised rate: norms and biases stay 16-bit in MLX, but they are < 0.1% of
    a 7B+ model.
    """
    if bits not in QUANT_BITS:
        raise ValueError(f"{bits}-bit quantisation: MLX quantises to {', '.join(map(str, QUANT_BITS))} bits")
    return replace(
        size,
        bytes_per_param=bits / 8 + QUANT_GROUP_OVERHEAD_BYTES / group_size,
        quant_bits=bits,
        group_size=group_size,
    )


_FLOAT_LABELS = {"bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0, "float16": 2.0, "fp32": 4.0, "float32": 4.0}
QUANTIZATIONS = ("none", "bf16", "fp16", "fp32", *(f"{b}bit" for b in QUANT_BITS))


def with_quantization(size: ModelSize, label: str | None, group_size: int = QUANT_GROUP_SIZE) -> ModelSize:
    """The model as stored in format `label`: None keeps its own format (config.json's `quantization`, else its dtype);
    'none' means not quantised (its own dtype if it is not quantised, else bf16); 'bf16', 'fp16', 'fp32';
    '4bit', '8bit' (and 2, 3, 5, 6 bits) with `group_size` weights per scale and bias."""
    if label is None:
        return size
    text = label.strip().lower()
    plain = replace(size, quant_bits=None, group_size=None)
    if text == "none":
        return size if not size.quantised else replace(plain, bytes_per_param=2.0)
    if text in _FLOAT_LABELS:
        return replace(plain, bytes_per_param=_FLOAT_LABELS[text])
    m = re.fullmatch(r"(?:q|int)?(\d+)(?:-?bits?)?", text)
    if m:
        return quantise(size, int(m.group(1)), group_size)
    raise ValueError(f"quantization {label!r}: use one of {', '.join(QUANTIZATIONS)}")


# Published config.json shapes (Hugging Face model cards) of common decoder-only models. A request that names only a
# size ("70B") borrows the layers, widths and heads of the nearest one by parameter count (of its family when the
# request names one: "Qwen 7B"), so that KV cache, LoRA adapters and activations can be estimated. The parameter
# count stays the requested one.
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "head_dim": 128, "num_key_value_heads": 8}
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "head_dim": 128}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 152064, "num_key_value_heads": 8}


def _shape(base: dict, layers: int, hidden: int, inter: int, heads: int, **extra) -> dict:
    shape = {
        **base,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
    }
    shape.setdefault("num_key_value_heads", heads)
    return {**shape, **extra}


KNOWN_SHAPES: dict[str, dict] = {
    "Llama-3.2-1B": _shape(_LLAMA3, 16, 2048, 8192, 32, head_dim=64, tie_word_embeddings=True),
    "Llama-3.2-3B": _shape(_LLAMA3, 28, 3072, 8192, 24, tie_word_embeddings=True),
    "Llama-2-7B": _shape(_LLAMA2, 32, 4096, 11008, 32),
    "Llama-3.1-8B": _shape(_LLAMA3, 32, 4096, 14336, 32),
    "Llama-2-13B": _shape(_LLAMA2, 40, 5120, 13824, 40),
    "Llama-3.1-70B": _shape(_LLAMA3, 80, 8192, 28672, 64),
    "Llama-3.1-405B": _shape(_LLAMA3, 126, 16384, 53248, 128),
    "Qwen2.5-0.5B": _shape(
        _QWEN25, 24, 896, 4864, 14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True
    ),
    "Qwen2.5-1.5B": _shape(
        _QWEN25, 28, 1536, 8960, 12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True
    ),
    "Qwen2.5-7B": _shape(_QWEN25, 28, 3584, 18944, 28, num_key_value_heads=4),
    "Qwen2.5-14B": _shape(_QWEN25, 48, 5120, 13824, 40),
    "Qwen2.5-32B": _shape(_QWEN25, 64, 5120, 27648, 40),
    "Qwen2.5-72B": _shape(_QWEN25, 80, 8192, 29568, 64),
}


def assumed_architecture(params: float, request: str = "") -> ModelSize:
    """A ModelSize of `params` parameters (bf16) with the architecture of the nearest shape in KNOWN_SHAPES.

    Nearest = smallest |log(params / shape's params)|, among the shapes of the family the request names
    (llama, qwen), else among all. The note says which shape was assumed.
    """
    families = [name for name in KNOWN_SHAPES if re.match(r"[a-z]+", name.lower()).group(0) in request.lower()]
    candidates = families or list(KNOWN_SHAPES)
    sizes = {name: size_from_config(KNOWN_SHAPES[name]) for name in candidates}
    name = min(sizes, key=lambda n: abs(math.log(params / sizes[n].params)))
    s = sizes[name]
    note = (
        f"architecture assumed from {name} ({s.params_b:.3g}B: {s.layers} layers, hidden {s.hidden}, "
        f"MLP {s.intermediate}, {s.heads} heads, {s.kv_heads} KV heads, vocab {s.vocab}): the request names only a size"
    )
    return replace(s, params=params, bytes_per_param=2.0, model_type=None, arch_note=note)


@dataclass
class LoRASpec:
    """Adapters as realign's LoRAConfig makes them: `rank`, on every Linear of the last `layers` blocks (-1: all)."""

    rank: int = LORA_RANK
    layers: int = LORA_LAYERS


def lora_params(size: ModelSize, lora: LoRASpec) -> float:
    """Trainable adapter parameters: rank x (d_in + d_out) per adapted matrix (A is d_in x r, B is r x d_out).

    Per block, q: h -> a*hd, k and v: h -> kv*hd, o: a*hd -> h, gate and up: h -> I, down: I -> h,
    so the sum of d_in + d_out is 7h + 2*a*hd + 2*kv*hd + 3I.
    """
    per_block = (
        7 * size.hidden + 2 * size.heads * size.head_dim + 2 * size.kv_heads * size.head_dim + 3 * size.intermediate
    )
    return lora.rank * per_block * _adapted_layers(size, lora)


def _adapted_layers(size: ModelSize, lora: LoRASpec) -> int:
    return size.layers if lora.layers < 0 else min(lora.layers, size.layers)


def training_activation_bytes(size: ModelSize, batch: int, seq_len: int, layers: int, *, lora: bool = False) -> float:
    """Bytes the backward pass needs kept from the forward pass of `layers` decoder blocks, plus the output head.

    Per block, following the accounting of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
    Transformer Models" (arXiv:2205.05198, Sec. 4: 34sbh + 5as^2b bytes for a GPT block with 16-bit activations),
    redone for a Llama-style block (RMSNorm, grouped-query attention, SwiGLU MLP, no dropout), s = seq_len,
    b = batch, h = hidden, a = heads, hd = head_dim, kv = KV heads, I = MLP width, 2-byte activations:
      two norms' inputs 4sbh; q/k/v input 2sbh; Q 2sb*a*hd; K and V 4sb*kv*hd; softmax output 2as^2b;
      o_proj input 2sb*a*hd; MLP input 2sbh; gate and up outputs 4sbI; SiLU output and its product with up 4sbI
      = sb(8h + 4*a*hd + 4*kv*hd + 8I) + 2as^2b.
    LoRA (`lora`), per adapted block: mlx-lm's adapters are fp32, so `x @ lora_a` promotes the 16-bit x to an fp32
    copy per adapted projection, which lora_a's gradient keeps: 4sb(5h + a*hd + I) (q, k, v, gate and up read h,
    o a*hd, down I). The frozen base needs no weight gradient, so the 16-bit inputs only the projections read (the
    two norms' outputs, the attention output, the MLP product: 2sb(2h + a*hd + I)) are no longer kept. Net
    sb(16h + 2*a*hd + 2I).
    Head and loss: final norm input and head input 4sbh; per logit (V per token) 16 bytes: the 16-bit logits (2),
    their fp32 copy for the loss (4; the paper's 4sbv), the fp32 softmax its backward uses (4) and the logits'
    gradient in fp32 and 16-bit (6), which coexist with everything stored when the backward pass starts.
    Activations are 4-byte for an fp32 model: the per-block and 4sbh terms double, and nothing is promoted for LoRA.
    Simplifications: no gradient checkpointing (mlx-lm's default); attention scores materialised (MLX's attention
    backward); the backward pass's other transient buffers, SiLU's internal sigmoid and the allocator's cache are
    not counted, so this is a floor. Measured on MLX 0.32 (CPU; tests/test_hardware_plan.py checks it), an 8-block
    bf16 Llama-shaped model peaks at 1.1-1.3x this, full or LoRA; the excess, roughly two blocks' worth of transient
    buffers, is a few percent at 80 blocks.
    """
    s, b, h, hd = seq_len, batch, size.hidden, size.head_dim
    per_block = s * b * (8 * h + 4 * size.heads * hd + 4 * size.kv_heads * hd + 8 * size.intermediate)
    per_block += 2 * size.heads * s * s * b
    scale = _activation_bytes(size) / 2  # the formula counts 2-byte activations
    promoted = s * b * (16 * h + 2 * size.heads * hd + 2 * size.intermediate) if lora and scale == 1 else 0
    return scale * (layers * per_block + 4 * s * b * h) + layers * promoted + 16 * s * b * size.vocab


def _activation_bytes(size: ModelSize) -> int:
    # A quantised model computes in its scales' 16-bit dtype; an unquantised one in its own dtype.
    return 4 if not size.quantised and size.bytes_per_param >= 4 else 2


@dataclass
class MemoryEstimate:
    weights_gb: float
    kv_cache_gb: float | None  # None: architecture unknown, not estimated
    activations_gb: float | None
    total_gb: float
    note: str = ""
    method: str = "inference"
    adapters_gb: float | None = 0.0  # LoRA's trainable adapters (fp32); weights_gb is the base model
    gradients_gb: float | None = 0.0
    optimizer_gb: float | None = 0.0
    trainable_params: float | None = 0.0
    batch: int = 0
    seq_len: int = 0


def memory_estimate(
    size: ModelSize,
    batch: int,
    seq_len: int,
    *,
    kv_bytes: float = 2.0,
    method: str = "inference",
    lora: LoRASpec | None = None,
) -> MemoryEstimate:
    """Memory for `batch` sequences of `seq_len` tokens (a DPO pair is two sequences).

    inference: weights = params x bytes_per_param; KV cache = 2 (K and V) x layers x kv_heads x head_dim x seq x
      batch x kv_bytes; activations = batch x seq x (hidden + intermediate) x 2 bytes (one layer at a time).
    lora: weights = the base (frozen, may be quantised: QLoRA); adapters = `lora_params` x 4 bytes (mlx-lm makes
      them fp32); gradients = adapter params x 4 bytes; optimizer = AdamW's two moments, which MLX keeps in the
      parameter's dtype (`zeros_like(parameter)`): adapter params x 8 bytes; activations =
      `training_activation_bytes` over the adapted blocks (no gradient flows below the lowest one); no KV cache.
    full: every parameter trains. gradients = params x bytes_per_param; optimizer = params x 2 x bytes_per_param
      (MLX's AdamW keeps m and v in the weights' dtype and updates the weights in place: there is no fp32 master
      copy, so no 4 bytes/param for it; PyTorch-style mixed precision would need 12 bytes/param instead of 4);
      activations over all blocks. A quantised model cannot be fully fine-tuned (ValueError).
    With only a parameter count (no architecture), KV cache, activations and LoRA's parameters cannot be computed:
    they are None and the note says so.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    weights = size.params * size.bytes_per_param
    known = size.layers is not None
    unknown_note = "architecture unknown (size from a request)"
    if method == "inference":
        if not known:
            return MemoryEstimate(
                weights / 1e9,
                None,
                None,
                weights / 1e9,
                note=f"{unknown_note}: weights only; KV cache and activations not estimated",
                batch=batch,
                seq_len=seq_len,
            )
        kv = 2 * size.layers * size.kv_heads * size.head_dim * seq_len * batch * kv_bytes
        act = batch * seq_len * (size.hidden + size.intermediate) * 2
        return MemoryEstimate(
            weights / 1e9,
            kv / 1e9,
            act / 1e9,
            (weights + kv + act) / 1e9,
            note=size.arch_note,
            batch=batch,
            seq_len=seq_len,
        )
    if method == "full":
        if size.quantised:
            raise ValueError(
                f"full fine-tuning of a {size.quant_bits}-bit quantised model is not possible: MLX's QuantizedLinear "
                "weights are frozen (they have no gradient). Use --method lora (QLoRA: adapters on the quantised "
                "model) or --quantization bf16 (full fine-tuning of the 16-bit model)"
            )
        trainable, adapters = size.params, 0.0
        grads = trainable * size.bytes_per_param
        optimizer = 2 * trainable * size.bytes_per_param
        act = training_activation_bytes(size, batch, seq_len, size.layers) if known else None
        notes = ["AdamW moments in the weights' dtype, no fp32 master copy (MLX)"]
    else:
        lora = lora or LoRASpec()
        if not known:
            return MemoryEstimate(
                weights / 1e9,
                0.0,
                None,
                weights / 1e9,
                note=f"{unknown_note}: base weights only; LoRA adapters and activations not estimated",
                method=method,
                adapters_gb=None,
                gradients_gb=None,
                optimizer_gb=None,
                trainable_params=None,
                batch=batch,
                seq_len=seq_len,
            )
        trainable = lora_params(size, lora)
        # the adapters are fp32 (mlx-lm's LoRALinear draws them with mx.random.uniform / mx.zeros): 4 bytes each
        adapters = trainable * 4
        grads = trainable * 4
        optimizer = trainable * 8
        blocks = _adapted_layers(size, lora)
        act = training_activation_bytes(size, batch, seq_len, blocks, lora=True)
        targets = "/".join(t.split("_")[0] for t in LORA_TARGETS)
        notes = [
            f"LoRA rank {lora.rank} on {targets} of {blocks} of {size.layers} blocks "
            f"({trainable:,.0f} fp32 adapter parameters)"
        ]
    if size.arch_note:
        notes.append(size.arch_note)
    if act is None:
        notes.append(f"{unknown_note}: activations not estimated")
    notes.append(
        "no gradient checkpointing; activations are a floor (transient backward buffers not counted: MLX peaks "
        "1.1-1.3x it on small models)"
    )
    total = weights + adapters + grads + optimizer + (act or 0.0)
    return MemoryEstimate(
        weights / 1e9,
        0.0,
        act / 1e9 if act is not None else None,
        total / 1e9,
        note="; ".join(notes),
        method=method,
        adapters_gb=adapters / 1e9,
        gradients_gb=grads / 1e9,
        optimizer_gb=optimizer / 1e9,
        trainable_params=trainable,
        batch=batch,
        seq_len=seq_len,
    )
