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
    shared_prefill: bool = Field(
        True,
        description="With n > 1, a prompt's n completions share one prefill of the prompt (its KV cache, computed "
        "once, is the start of each of them) instead of n identical ones. Same distribution; the same completions "
        "too when a batch holds at most 32 sequences (beyond that mlx-lm admits separately prefilled rows to "
        "decoding 32 at a time, so rows meet other random draws). Models whose caches are not plain KV caches "
        "(sliding windows, state-space layers) prefill each completion separately.",
    )


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
    out: list[list[Completion]] = [[] for _ in prompts]
    stop = set(tokenizer.eos_token_ids)
    shared = cfg.shared_prefill and cfg.n > 1 and can_share_prefill(model)
    mx.random.seed(cfg.seed)
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        caches = None
        if shared:
            # The chunk's prompts, each prefilled once (all but its last token, which starts the decoding).
            caches_of = prefill_caches(model, {i: encoded[i] for i, _ in chunk})
            caches = [caches_of[i] for i, _ in chunk]
        resp = mlx_lm.batch_generate(
            model,
            tokenizer,
            [encoded[i][-1:] if shared else encoded[i] for i, _ in chunk],
            prompt_caches=caches,
            max_tokens=cfg.max_tokens,
            sampler=sampler,
            return_token_ids=True,
            completion_batch_size=len(chunk),
            # Shared: every row's prompt is its one last token, so all of them start decoding together.
            prefill_batch_size=len(chunk) if shared else min(len(chunk), 32),
        )
        for (i, s), text, ids in zip(chunk, resp.texts, resp.token_ids):
            ids = [t for t in ids if t not in stop]
            out[i].append(Completion(i, s, text, ids, finished=len(ids) < cfg.max_tokens))
        if on_progress:
            on_progress(min(start + cfg.batch_size, len(jobs)), len(jobs))
    return out


def can_share_prefill(model) -> bool:
    """Whether the model's KV caches are plain ones that one prefill can start several completions from."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    return all(type(c) is KVCache for c in make_prompt_cache(model))


def prefill_caches(model, prompts: dict[int, list[int]]) -> dict[int, list]:
    """For each prompt (key -> token ids), the KV caches (one per layer) of all its tokens but the last, computed
    once: prompts of equal length in one batched forward pass (no padding, so each row is exactly its own
    prefill), then split into batch-1 caches that mlx-lm's batch_generate merges for decoding."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    by_length: dict[int, list[int]] = {}
    for key, ids in prompts.items():
        by_length.setdefault(len(ids) - 1, []).append(key)
    out: dict[int, list] = {}
    for n, keys in by_length.items():
        if n == 0:  # a one-token prompt: nothing to prefill
            out.update({k: make_prompt_cache(model) for k in keys})
            continue
        batch = make_prompt_cache(model)
        model(mx.array([prompts[k][:-1] for k in keys]), cache=batch)
        mx.eval([c.state for c in batch])
        for row, key in enumerate(keys):
            caches = make_prompt_cache(model)
            for mine, full in zip(caches, batch):
                keys_, values, offset = full.state
                mine.state = (keys_[row : row + 1, :, :offset, :], values[row : row + 1, :, :offset, :], offset)
            out[key] = caches
    return out
