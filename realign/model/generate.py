"""Batched sampling with mlx-lm: N completions per prompt, chat template applied."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    """How completions are sampled."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=256, description="Completions per prompt.")
    batch_size: int = Field(32, ge=1, le=4096, description="Sequences decoded together (mlx-lm continuous batching).")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1.0 disables it.")
    max_tokens: int = Field(64, ge=1, le=32768, description="Maximum new tokens per completion.")
    seed: int = Field(
        0, ge=0, description="Sampling seed: same seed, same prompts, same batch size -> same completions."
    )
    chat: bool = Field(True, description="Apply the tokenizer's chat template to each prompt.")


@dataclass
class Completion:
    """One sampled completion. tokens: the generated ids (without the stop token)."""

    prompt_index: int
    sample_index: int
    text: str
    tokens: list[int]
    finished: bool  # True when the model emitted its stop token before max_tokens

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def prompt_tokens(tokenizer, prompt: str | Sequence[dict], chat: bool = True) -> list[int]:
    """Token ids of a prompt: chat-templated with the generation prompt, or plain text."""
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return list(tokenizer.encode(prompt))


def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[dict]],
    config: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[list[Completion]]:
    """Sample `config.n` completions for every prompt.

    Returns one list per prompt (in order) of `n` Completions. `on_progress(done, total)`
    is called after each batch with the number of sequences finished.
    """
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    cfg = config or GenerationConfig()
    encoded = [prompt_tokens(tokenizer, p, cfg.chat) for p in prompts]
    jobs = [(i, s) for i in range(len(prompts)) for s in range(cfg.n)]
    sampler = make_sampler(temp=cfg.temperature, top_p=cfg.top_p if cfg.top_p < 1.0 else 0.0)
    mx.random.seed(cfg.seed)
    out: list[list[Completion]] = [[] for _ in prompts]
    stop = set(tokenizer.eos_token_ids)
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        resp = mlx_lm.batch_generate(
            model,
            tokenizer,
            [encoded[i] for i, _ in chunk],
            max_tokens=cfg.max_tokens,
            sampler=sampler,
            return_token_ids=True,
            completion_batch_size=len(chunk),
            prefill_batch_size=min(len(chunk), 32),
        )
        for (i, s), text, ids in zip(chunk, resp.texts, resp.token_ids):
            ids = [t for t in ids if t not in stop]
            out[i].append(Completion(i, s, text, ids, finished=len(ids) < cfg.max_tokens))
        if on_progress:
            on_progress(min(start + cfg.batch_size, len(jobs)), len(jobs))
    return out
