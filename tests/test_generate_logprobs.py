"""Batched generation and completion log-probs."""

import mlx.core as mx
import numpy as np
import pytest

from realign.model.generate import GenerationConfig, generate, prompt_tokens
from realign.model.load import load_model
from realign.model.logprobs import bucket_length, collate, encode, reference_logps, sequence_logps


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """A tiny model with larger weights (init_std 0.08): its greedy tokens vary (the default repeats one token)."""
    from realign.model.tiny import TinyModelConfig, build_tiny_model

    return load_model(build_tiny_model(tmp_path_factory.mktemp("models") / "peaked", TinyModelConfig(init_std=0.08)))


def test_n_samples_per_prompt_with_token_counts(lm):
    prompts = ["Reverse: 123", "Copy: 45", "hi"]
    out = generate(lm.model, lm.tokenizer, prompts, GenerationConfig(n=4, batch_size=5, max_tokens=6, temperature=1.0))
    assert [len(x) for x in out] == [4, 4, 4]
    for i, samples in enumerate(out):
        assert [c.sample_index for c in samples] == [0, 1, 2, 3] and all(c.prompt_index == i for c in samples)
        for c in samples:
            assert 0 < c.n_tokens <= 6 or (c.n_tokens == 0 and c.finished)
            assert lm.tokenizer.decode(c.tokens) == c.text


def test_seeded_sampling_is_reproducible_and_greedy_is_deterministic(lm):
    cfg = GenerationConfig(n=3, max_tokens=8, temperature=1.0, seed=7)
    a = generate(lm.model, lm.tokenizer, ["Reverse: 9876"], cfg)
    b = generate(lm.model, lm.tokenizer, ["Reverse: 9876"], cfg)
    c = generate(lm.model, lm.tokenizer, ["Reverse: 9876"], cfg.model_copy(update={"seed": 8}))
    assert [s.tokens for s in a[0]] == [s.tokens for s in b[0]]
    assert [s.tokens for s in a[0]] != [s.tokens for s in c[0]]
    g = generate(lm.model, lm.tokenizer, ["Reverse: 9876"], GenerationConfig(n=3, temperature=0.0, max_tokens=8))
    assert len({tuple(s.tokens) for s in g[0]}) == 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_shared_prompt_prefill_gives_the_completions_separate_prefills_give(lm, temperature):
    # prompts of several lengths (two of equal length, prefilled in one batch) and a batch that splits a group
    prompts = ["Reverse: 12", "Copy: 9876543210 and then some more words", "Reverse: 34", "Copy: 5"]
    runs = {}
    for shared in (True, False):
        cfg = GenerationConfig(n=3, batch_size=5, temperature=temperature, max_tokens=6, seed=11, shared_prefill=shared)
        runs[shared] = [[c.tokens for c in group] for group in generate(lm.model, lm.tokenizer, prompts, cfg)]
    assert runs[True] == runs[False]
    assert sum(len(t) for g in runs[True] for t in g) > 0


def _mlx_lm_batch(model, rows, caches, max_tokens, sampler, stop):
    """mlx-lm's own batch_generate loop (its BatchGenerator, as batch_generate drives it) with any stop tokens."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in stop],
        sampler=sampler,
        completion_batch_size=len(rows),
        prefill_batch_size=len(rows),
    )
    uids = gen.insert(rows, [max_tokens] * len(rows), caches=caches)
    out = {uid: [] for uid in uids}
    while responses := gen.next_generated():
        for r in responses:
            if r.finish_reason != "stop":
                out[r.uid].append(r.token)
    gen.close()
    return [out[uid] for uid in uids]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("shared", [False, True], ids=["prefill", "shared-prefill"])
def test_lean_decoding_gives_mlx_lm_batch_generate_tokens(peaked, temperature, shared):
    """realign's decode loop against mlx-lm's: same tokens, row by row, with every row running to max_tokens, and
    with rows stopping at different steps (stop tokens taken from what the rows emit)."""
    from mlx_lm.sample_utils import make_sampler

    from realign.model.generate import decode_batch, lean_decoding_applies, prefill_caches

    lm = peaked
    prompts = ["Reverse: 12", "Copy: 9876543210 and then some more words", "Reverse: 34", "Copy: 5", "hi there"]
    prompts += [f"Reverse: {1000 + 37 * i}" for i in range(5)]
    encoded = [prompt_tokens(lm.tokenizer, p) for p in prompts]
    sampler = make_sampler(temp=temperature)

    def rows_and_caches():
        if not shared:
            return encoded, None
        caches = prefill_caches(lm.model, dict(enumerate(encoded)))
        return [e[-1:] for e in encoded], [caches[i] for i in range(len(encoded))]

    rows, caches = rows_and_caches()
    assert lean_decoding_applies(rows, shared)
    mx.random.seed(3)
    free = decode_batch(lm.model, rows, caches, 12, sampler, set())
    rows, caches = rows_and_caches()
    mx.random.seed(3)
    assert free == _mlx_lm_batch(lm.model, rows, caches, 12, sampler, set()) and {len(r) for r in free} == {12}
    stop = {free[i][i + 2] for i in range(4)}  # row i stops by its token i + 2 (same draws up to there)
    results = []
    for run in (decode_batch, _mlx_lm_batch):
        rows, caches = rows_and_caches()
        mx.random.seed(3)
        results.append(run(lm.model, rows, caches, 12, sampler, stop))
    ours, theirs = results
    assert ours == theirs
    lengths = [len(r) for r in ours]
    assert min(lengths) < 12 and len(set(lengths)) > 2, lengths  # rows stop at several steps


def test_lean_decoding_steps_aside_where_mlx_lm_batches_differently():
    from realign.model.generate import lean_decoding_applies

    assert lean_decoding_applies([[1, 2]] * 32, shared=False)
    assert not lean_decoding_applies([[1, 2]] * 33, shared=False)  # mlx-lm admits 32 rows at a time
    assert lean_decoding_applies([[1] * 2049], shared=False)  # 2048 to prefill, the last token starts decoding
    assert not lean_decoding_applies([[1] * 2050], shared=False)  # prefilled in steps, between decoding steps
    assert not lean_decoding_applies([[1, 2], [3]], shared=False)  # a one-token prompt starts decoding first
    assert lean_decoding_applies([[1], [3]], shared=True)


def test_prefill_caches_hold_each_prompt_but_its_last_token(lm):
    from realign.model.generate import can_share_prefill, prefill_caches

    ids = {0: prompt_tokens(lm.tokenizer, "Reverse: 12"), 1: prompt_tokens(lm.tokenizer, "Reverse: 34")}
    assert len(ids[0]) == len(ids[1]) and can_share_prefill(lm.model)
    caches = prefill_caches(lm.model, ids)
    for key, tokens in ids.items():
        assert all(c.offset == len(tokens) - 1 and c.keys.shape[0] == 1 for c in caches[key])
        # the next token's logits from the cache equal those of a full forward pass over the prompt
        from_cache = lm.model(mx.array([tokens[-1:]]), cache=caches[key])[0, -1]
        full = lm.model(mx.array([tokens]))[0, -1]
        assert mx.allclose(from_cache, full, atol=1e-4).item()


def test_chat_template_is_applied(lm):
    ids = prompt_tokens(lm.tokenizer, "Copy: 1")
    assert lm.tokenizer.decode(ids) == "<|im_start|>user\nCopy: 1<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_tokens(lm.tokenizer, "Copy: 1", chat=False) == list(lm.tokenizer.encode("Copy: 1"))


def test_mask_covers_completion_and_stop_token_only(lm):
    e = encode(lm.tokenizer, "Copy: 12", "12")
    assert e.n_completion == 3  # "1", "2", <|im_end|>
    b = collate([e], pad_id=0)
    mask = np.array(b.mask)[0]
    assert mask.sum() == 3 and mask[e.n_prompt - 1 : e.n_prompt + 2].tolist() == [1, 1, 1]
    assert b.tokens.shape[1] == bucket_length(len(e.ids))  # padded to the longest row's bucket only


def test_sequence_logps_equal_a_manual_sum_and_ignore_padding(lm):
    short = encode(lm.tokenizer, "Copy: 12", "12")
    long = encode(lm.tokenizer, "Reverse: 123456", "654321 and more words here")
    alone, n_alone = sequence_logps(lm.model, collate([short]))
    both, n_both = sequence_logps(lm.model, collate([short, long]))
    assert n_alone.tolist() == [3.0] and n_both.tolist() == [3.0, float(long.n_completion)]
    assert both[0].item() == pytest.approx(alone[0].item(), abs=1e-4)
    # manual: log softmax of the logits at each completion position, picked at the next token
    logits = np.array(lm.model(mx.array([short.ids]))[0], dtype=np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    manual = sum(logits[t, short.ids[t + 1]] - logz[t] for t in range(short.n_prompt - 1, len(short.ids) - 1))
    assert alone[0].item() == pytest.approx(manual, abs=1e-3)


def test_reference_cache_matches_direct_computation(lm):
    pairs = [
        {"prompt": "Reverse: 12", "chosen": "21", "rejected": "12"},
        {"prompt": "Copy: 345", "chosen": "345", "rejected": "543 oops"},
    ]
    ref = reference_logps(lm.model, lm.tokenizer, pairs, batch_size=1)
    direct, counts = sequence_logps(
        lm.model, collate([encode(lm.tokenizer, p["prompt"], p["rejected"]) for p in pairs])
    )
    assert ref["rejected_logps"] == pytest.approx(np.array(direct), abs=1e-4)
    assert ref["rejected_tokens"].tolist() == np.array(counts).tolist()
    assert np.all(np.isfinite(ref["chosen_logps"])) and np.all(ref["chosen_logps"] < 0)


def test_ifd_from_model_losses(lm):
    from realign.eval.metrics import ifd_score
    from realign.model.logprobs import mean_completion_loss

    given = mean_completion_loss(lm.model, lm.tokenizer, ["Reverse: 12345"], ["54321"])
    alone = mean_completion_loss(lm.model, lm.tokenizer, [None], ["54321"])
    assert given[0] > 0 and alone[0] > 0
    # both are mean per-token cross-entropies (nats): the ratio is the IFD score
    assert ifd_score(given[0], alone[0]) == pytest.approx(given[0] / alone[0])
    seq, n = sequence_logps(lm.model, collate([encode(lm.tokenizer, "Reverse: 12345", "54321")]))
    assert given[0] == pytest.approx(-seq[0].item() / n[0].item(), rel=1e-5)


def test_generate_cli(tiny_model_dir, tmp_path):
    import json

    from conftest import run_cli

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Reverse: 123"}\n\n{"instruction": "Copy: 9"}\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--n",
        "3",
        "--max-tokens",
        "4",
        "--seed",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Reverse: 123", "Copy: 9"]
    assert all(len(r["responses"]) == 3 and all(0 <= x["tokens"] <= 4 for x in r["responses"]) for r in rows)
    prompts.write_text('{"text": "no prompt field"}\n')
    bad = run_cli(
        "generate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "x.jsonl")
    )
    assert bad.returncode == 2 and f"{prompts}:1: no 'prompt'" in bad.stderr
