"""Tiny-model kit: a Qwen2-architecture model and a BPE tokenizer built offline.

Tests and the default demo cannot download models, so realign builds its own:
a small Qwen2 model (random weights, deterministic for a seed) and a byte-level
BPE tokenizer trained on an embedded synthetic corpus, written as a normal
model directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) that `mlx_lm.load` and `realign.model.load.load_model`
read through the same code path as a real model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from realign.io import atomic_dir

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_TOKEN, IM_START, IM_END = SPECIAL_TOKENS

# Qwen-style ChatML template: one <|im_start|>role ... <|im_end|> block per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TinyModelConfig(BaseModel):
    """Shape and seed of a tiny Qwen2 model built by `realign model tiny`."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=16, le=4096, description="Hidden size (d_model); a multiple of 16.")
    layers: int = Field(2, ge=1, le=64, description="Number of transformer blocks.")
    vocab: int = Field(2048, ge=300, le=65536, description="Vocabulary size of the embedding and the BPE tokenizer.")
    heads: int | None = Field(None, ge=1, le=128, description="Attention heads; default hidden // 32 (head dim 32).")
    kv_heads: int | None = Field(None, ge=1, le=128, description="Key/value heads (GQA); default heads // 2.")
    intermediate: int | None = Field(None, ge=16, le=65536, description="MLP width; default 4 * hidden.")
    max_positions: int = Field(2048, ge=64, le=131072, description="Maximum sequence length (RoPE positions).")
    seed: int = Field(0, ge=0, description="Seed for the weights; same seed, same model.")
    init_std: float = Field(0.02, gt=0, le=1.0, description="Std of the normal init of weight matrices.")

    def resolved(self) -> dict:
        """Head counts and MLP width with defaults filled in; validates divisibility."""
        heads = self.heads or max(1, self.hidden // 32)
        kv_heads = self.kv_heads or max(1, heads // 2)
        if self.hidden % heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={heads}; pick heads that divide hidden")
        if heads % kv_heads:
            raise ValueError(f"heads={heads} is not divisible by kv_heads={kv_heads}; pick kv_heads that divide heads")
        if (self.hidden // heads) % 2:
            raise ValueError(f"head dim {self.hidden // heads} must be even for RoPE; change hidden or heads")
        return {"heads": heads, "kv_heads": kv_heads, "intermediate": self.intermediate or 4 * self.hidden}


# --- tokenizer ---------------------------------------------------------------

_WORDS = (
    "the a an of to in and or is are was were be been has have had do does did not no yes "
    "what which who when where why how many much more less most least than then there here "
    "this that these those it its they them their we our you your he she his her i me my "
    "model models data answer answers question questions prompt prompts reward rewards policy "
    "reference preference preferred chosen rejected score scores scored judge judges verify "
    "verified verifier correct incorrect wrong right true false fact facts factual source cite "
    "citation citations evidence claim claims confident confidence unsure unknown know knows "
    "learn learning learned train training trained test tests tested evaluate evaluation "
    "align alignment aligned gap margin accuracy loss gradient step steps batch batches token "
    "tokens sequence text word words sentence number numbers sum add plus minus times divided "
    "equal equals result total value values count even odd first second third last next "
    "before after because so if else while for with without from into over under between "
    "small large big little good bad better best worse worst fast slow quick careful clear "
    "short long simple hard easy new old same different other each every all some any "
    "please explain describe write list give show tell find compute solve check calculate "
    "summary summarize example examples reason reasoning think thinking step-by-step "
    "capital city country river mountain ocean planet sun moon star water fire earth air "
    "red blue green yellow black white color cat dog bird fish tree flower apple book "
    "paris london berlin rome madrid tokyo france england germany italy spain japan "
    "user assistant system hello hi thanks thank okay sure sorry cannot can will would should "
    "could might must may one two three four five six seven eight nine ten hundred thousand"
).split()


def tokenizer_corpus(n_lines: int = 20000, seed: int = 1234) -> Iterator[str]:
    """Deterministic synthetic English + arithmetic text for BPE training."""
    rng = random.Random(seed)
    # Pseudo-words from syllables give BPE enough distinct merges to fill a 2k+ vocabulary.
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    pseudo = ["".join(rng.choices(syllables, k=rng.randint(2, 3))) for _ in range(3000)]
    for i in range(n_lines):
        kind = i % 5
        if kind == 4:
            yield " ".join(rng.choices(pseudo, k=rng.randint(4, 12))) + "."
            continue
        if kind == 0:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op = rng.choice(["+", "-", "*"])
            res = {"+": a + b, "-": a - b, "*": a * b}[op]
            yield f"What is {a} {op} {b}? The answer is {res}."
        elif kind == 1:
            words = rng.choices(_WORDS, k=rng.randint(5, 16))
            words[0] = words[0].capitalize()
            yield " ".join(words) + rng.choice([".", "?", "!", ":"])
        elif kind == 2:
            w = rng.choices(_WORDS, k=rng.randint(3, 8))
            yield f"Question: {' '.join(w)}?\nAnswer: {' '.join(rng.choices(_WORDS, k=4))}."
        else:
            w = rng.choices(_WORDS, k=rng.randint(2, 6))
            score, day, month = rng.randint(0, 99), rng.randint(1, 31), rng.randint(1, 12)
            yield f'{{"prompt": "{" ".join(w)}", "score": 0.{score:02d}}} ({day}/{month})'


def train_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer (digits split into single tokens) offline.

    Returns a `tokenizers.Tokenizer` whose vocabulary is at most `vocab_size`
    (the embedded corpus may not support every merge) with the ChatML special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Digits first, one token each, so arithmetic is tokenised consistently.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return tok


# --- model -------------------------------------------------------------------


def _hf_config(cfg: TinyModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> dict:
    r = cfg.resolved()
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": cfg.hidden,
        "intermediate_size": r["intermediate"],
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": r["heads"],
        "num_key_value_heads": r["kv_heads"],
        "vocab_size": vocab_size,
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "realign_tiny": cfg.model_dump(),
    }


def tiny_config(cfg: TinyModelConfig) -> dict:
    """The config.json `build_tiny_model(cfg)` writes, without building it (token ids aside, which a model's size
    does not depend on): what a calibration's model key is compared against before the model exists."""
    return _hf_config(cfg, cfg.vocab, 0, 0)


def _init_weights(hf_config: dict, seed: int, std: float) -> dict:
    """Weights of a Qwen2 model, N(0, std) matrices, zero biases, unit norms."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    model = qwen2.Model(qwen2.ModelArgs.from_dict(hf_config))
    params = sorted(tree_flatten(model.parameters()))
    keys = mx.random.split(mx.random.key(seed), len(params))
    weights = {}
    for i, (name, value) in enumerate(params):
        if "norm" in name:
            weights[name] = mx.ones(value.shape, dtype=mx.float32)
        elif name.endswith(".bias"):
            weights[name] = mx.zeros(value.shape, dtype=mx.float32)
        else:
            weights[name] = std * mx.random.normal(value.shape, dtype=mx.float32, key=keys[i])
    mx.eval(weights)
    return weights


def build_tiny_model(out_dir: str | Path, cfg: TinyModelConfig | None = None, *, force: bool = False) -> Path:
    """Write a tiny Qwen2 model directory to `out_dir` and return its path.

    The directory is assembled in a temporary sibling and renamed into place,
    so an interrupted build never leaves a half-written model behind.
    Raises FileExistsError when `out_dir` exists and is not empty (unless `force`).
    """
    import mlx.core as mx

    cfg = cfg or TinyModelConfig()
    cfg.resolved()  # fail early on impossible shapes
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another directory or pass --force")

    tok = train_tokenizer(cfg.vocab)
    eos_id, pad_id = tok.token_to_id(IM_END), tok.token_to_id(PAD_TOKEN)
    hf_config = _hf_config(cfg, cfg.vocab, eos_id, pad_id)
    weights = _init_weights(hf_config, cfg.seed, cfg.init_std)

    with atomic_dir(out) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "model_max_length": cfg.max_positions,
                    "eos_token": IM_END,
                    "pad_token": PAD_TOKEN,
                    "bos_token": None,
                    "unk_token": None,
                    "add_bos_token": False,
                    "clean_up_tokenization_spaces": False,
                    "chat_template": CHAT_TEMPLATE,
                },
                indent=2,
            )
        )
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"eos_token": IM_END, "pad_token": PAD_TOKEN, "additional_special_tokens": [IM_START]}, indent=2)
        )
        (tmp / "generation_config.json").write_text(
            json.dumps({"eos_token_id": eos_id, "pad_token_id": pad_id}, indent=2)
        )
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out
