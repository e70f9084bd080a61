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
        rows = [encoded[i][-1:] if shared else encoded[i] for i, _ in chunk]
        if lean_decoding_applies(rows, shared):
            token_ids = decode_batch(model, rows, caches, cfg.max_tokens, sampler, stop)
            texts = [tokenizer.decode(ids) for ids in token_ids]
        else:
            resp = mlx_lm.batch_generate(
                model,
                tokenizer,
                rows,
                prompt_caches=caches,
                max_tokens=cfg.max_tokens,
                sampler=sampler,
                return_token_ids=True,
                completion_batch_size=len(chunk),
                # Shared: every row's prompt is its one last token, so all of them start decoding together.
                prefill_batch_size=len(chunk) if shared else min(len(chunk), 32),
            )
            texts, token_ids = resp.texts, resp.token_ids
        for (i, s), text, ids in zip(chunk, texts, token_ids):
            ids = [t for t in ids if t not in stop]
            out[i].append(Completion(i, s, text, ids, finished=len(ids) < cfg.max_tokens))
        if on_progress:
            on_progress(min(start + cfg.batch_size, len(jobs)), len(jobs))
    return out


# mlx-lm's batch_generate admits at most this many rows to decoding at once (its prefill batch) and prefills a prompt
# in steps of this many tokens, interleaving the steps with other rows' decoding.
MLX_LM_PREFILL_BATCH, MLX_LM_PREFILL_STEP = 32, 2048


def lean_decoding_applies(rows: Sequence[Sequence[int]], shared: bool) -> bool:
    """Whether `decode_batch` reproduces mlx-lm's batch_generate exactly for these rows: every row enters decoding
    at the same step, which holds when there are at most 32 rows, each prompt fits one prefill step, and either
    every prompt is its one last token (shared prefill) or none is."""
    # a prompt's last token starts the decoding: the rest, len - 1 tokens, must fit one prefill step
    if len(rows) > MLX_LM_PREFILL_BATCH or any(len(r) - 1 > MLX_LM_PREFILL_STEP for r in rows):
        return False
    return shared or all(len(r) > 1 for r in rows)


def decode_batch(
    model, rows: Sequence[Sequence[int]], caches: list | None, max_tokens: int, sampler, stop: set[int]
) -> list[list[int]]:
    """The generated ids of each row (the stop token excluded), as mlx-lm's batch_generate returns them when
    `lean_decoding_applies`: the same prefill (its PromptProcessingBatch), the same forward, log-softmax and sampler
    calls on the same rows in the same order (one step ahead, rows dropped once finished), so the same random draws
    and tokens (greedy: the argmax of the logits, see below). It leaves out per-step bookkeeping: a per-row split of
    the log-probs, response objects, stop-sequence matchers, per-row token buffers."""
    import mlx.core as mx
    from mlx_lm.generate import PromptProcessingBatch, generation_stream, wired_limit
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import greedy_sampler

    n = len(rows)
    # Greedy decoding takes the argmax of the logits, not of their log-softmax as mlx-lm does: the same token (a shift
    # by one constant per row keeps the order; only an exact tie after rounding could differ), and on a CPU the
    # full-vocabulary exp costs as much as a tiny model's forward pass.
    greedy = sampler is greedy_sampler
    # as mlx-lm's generators: the model's weights wired in memory on a Mac while decoding (nothing on a CPU)
    with wired_limit(model, [generation_stream]), mx.stream(generation_stream):
        batch = PromptProcessingBatch(
            model=model,
            uids=list(range(n)),
            caches=caches if caches is not None else [make_prompt_cache(model) for _ in range(n)],
            tokens=None,
            prefill_step_size=MLX_LM_PREFILL_STEP,
        )
        if any(len(r) > 1 for r in rows):
            batch.prompt([list(r[:-1]) for r in rows])
        cache = batch.prompt_cache

        def sample(tokens: mx.array) -> mx.array:
            logits = model(tokens[:, None], cache=cache)[:, -1, :]
            if greedy:  # the largest logit is the largest log-prob: no log-softmax over the vocabulary
                return mx.argmax(logits, axis=-1)
            return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

        active = list(range(n))  # the original row of each row of the decoding batch
        out: list[list[int]] = [[] for _ in range(n)]
        upcoming = sample(mx.array([r[-1] for r in rows]))
        mx.async_eval(upcoming)
        steps = 0
        while active:
            steps += 1
            if steps % 512 == 0:  # as mlx-lm's BatchGenerator: long generations return the allocator's cache
                mx.clear_cache()
            current = upcoming
            upcoming = sample(current)  # the next step is queued before this one is read, as mlx-lm does
            mx.async_eval(upcoming)
            keep = []
            for j, token in enumerate(current.tolist()):
                row = out[active[j]]
                if token in stop:
                    continue
                row.append(token)
                if len(row) < max_tokens:
                    keep.append(j)
            if len(keep) < len(active):
                active = [active[j] for j in keep]
                if keep:
                    for c in cache:
                        c.filter(keep)
                    upcoming = upcoming[mx.array(keep)]
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
