"""The training loop: it learns, resumes exactly, accumulates correctly, reports TRL metrics and KL."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import REPO
from realign.data.demo import is_correct, splits
from realign.model.generate import GenerationConfig, generate
from realign.model.load import load_model
from realign.model.logprobs import pair_batch, reference_logps, sequence_logps
from realign.train.batches import batch_indices, preference_batches, sft_batches
from realign.train.loop import TrainConfig, adapters_disabled, prepare_model, token_stats, train
from realign.train.objectives import PreferenceLossConfig, preference_loss, sft_loss


def held_out_accuracy(lm, examples) -> float:
    outs = generate(
        lm.model,
        lm.tokenizer,
        [e.prompt for e in examples],
        GenerationConfig(temperature=0.0, max_tokens=10, batch_size=len(examples)),
    )
    return sum(is_correct(o[0].text, e.answer) for o, e in zip(outs, examples)) / len(examples)


@pytest.mark.slow
def test_sft_teaches_the_tiny_model_digit_reversal(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    train_rows, held_out = splits("reverse", 4000, 100, seed=0)
    assert not {e.digits for e in train_rows} & {e.digits for e in held_out}
    before = held_out_accuracy(lm, held_out)
    cfg = TrainConfig(steps=250, batch_size=32, learning_rate=3e-4, warmup_steps=10, lora=None, metrics_every=50)
    prepare_model(lm.model, cfg)
    result = train(lm.model, sft_loss, sft_batches(lm.tokenizer, [(e.prompt, e.answer) for e in train_rows], cfg), cfg)
    after = held_out_accuracy(lm, held_out)
    assert before < 0.05 and after > 0.30, (before, after)
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 5


def _weights(path):
    return mx.load(str(path))


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    script = REPO / "tests" / "helpers" / "train_run.py"
    straight = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "a"), "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr
    assert "done resumed_from=0 steps=8" in straight.stdout

    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "b"), "8", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until step 4 ran: the step-3 checkpoint is on disk, the run is mid-way
        if line.strip() == "step 4" or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_000003"
    assert not (tmp_path / "b" / "final.safetensors").exists()

    resumed = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "b"), "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "done resumed_from=3 steps=8" in resumed.stdout
    assert resumed.stdout.splitlines()[0] == "step 4"
    a, b = _weights(tmp_path / "a" / "final.safetensors"), _weights(tmp_path / "b" / "final.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert mx.array_equal(a[k], b[k]), k


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir):
    # Same-length examples, so the mean over 2 x 4 equals the mean over 8.
    examples = [(f"Copy: {d}", d) for d in ("123", "456", "789", "321", "654", "987", "111", "222")]
    results = []
    for bs, accum in ((8, 1), (4, 2)):
        lm = load_model(tiny_model_dir)
        cfg = TrainConfig(
            steps=1, batch_size=bs, grad_accum=accum, learning_rate=1e-2, lora=None, seed=3, compile=False
        )
        prepare_model(lm.model, cfg)
        src = sft_batches(lm.tokenizer, examples, cfg)
        train(lm.model, sft_loss, src, cfg)
        results.append(dict(tree_flatten(lm.model.parameters())))
    big, small = results
    # Adam's first step is ~lr * sign(g): float32 summation order moves near-zero gradients' updates by up to ~5e-5
    # (seen with mlx 0.32.4 + OpenBLAS), far below the 1e-2 a wrongly accumulated gradient moves them.
    for k in big:
        assert mx.allclose(big[k], small[k], atol=2e-4).item(), k


@pytest.mark.parametrize("compiled", [True, False])
def test_step_metrics_are_those_of_the_policy_before_its_update_on_the_last_micro_batch(tiny_model_dir, compiled):
    # KL and entropy reuse the loss step's logits: they must equal a separate measurement of the model as it was
    # before the step's update, on the step's last micro-batch (adapters off = the reference).
    lm = load_model(tiny_model_dir)
    cfg = TrainConfig(steps=2, batch_size=4, grad_accum=2, learning_rate=5e-2, seed=5, compile=compiled)
    prepare_model(lm.model, cfg)
    train_rows, _ = splits("reverse", 32, 1, seed=4)
    src = sft_batches(lm.tokenizer, [(e.prompt, e.answer) for e in train_rows], cfg)
    expected = []

    def before_step(step: int):  # the model as it stands before step `step` (0-based), on its last micro-batch
        expected.append(token_stats(lm.model, src(step * cfg.grad_accum + cfg.grad_accum - 1), None))

    before_step(0)
    rows = train(lm.model, sft_loss, src, cfg, callback=lambda row: before_step(row["step"])).history
    assert len(rows) == 2
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy == reference
    for row, want in zip(rows, expected):
        assert row["entropy"] == pytest.approx(want["entropy"], rel=1e-4)
        assert row["kl"] == pytest.approx(want["kl"], rel=1e-3, abs=1e-6)
    assert rows[1]["kl"] > 1e-4  # step 2 measures the model step 1 moved


def test_same_seed_same_run(tiny_model_dir):
    finals = []
    for _ in range(2):
        lm = load_model(tiny_model_dir)
        cfg = TrainConfig(steps=3, batch_size=4, learning_rate=1e-3, seed=11)
        prepare_model(lm.model, cfg)
        train_rows, _ = splits("copy", 32, 1, seed=2)
        hist = train(
            lm.model, sft_loss, sft_batches(lm.tokenizer, [(e.prompt, e.answer) for e in train_rows], cfg), cfg
        ).history
        finals.append((dict(tree_flatten(lm.model.trainable_parameters())), [h["loss"] for h in hist]))
    (w1, l1), (w2, l2) = finals
    assert l1 == l2
    assert all(mx.array_equal(w1[k], w2[k]) for k in w1)


def test_batch_indices_are_epochs_of_permutations():
    at = batch_indices(10, 4, seed=0)
    first_epoch = at(0) + at(1) + at(2)[:2]
    assert sorted(first_epoch) == list(range(10))
    assert at(1) == batch_indices(10, 4, seed=0)(1) and at(1) != batch_indices(10, 4, seed=1)(1)


def _logp_gap(lm, pairs) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected) under the model (summed over completion tokens)."""
    sums, _ = sequence_logps(lm.model, pair_batch(lm.tokenizer, pairs))
    n = len(pairs)
    return float((sums[:n] - sums[n:]).mean().item())


def _pairs(n=16):
    rows, _ = splits("reverse", n, 1, seed=4)
    return [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.digits} for e in rows if e.answer != e.digits]


@pytest.mark.parametrize(
    "loss",
    [
        PreferenceLossConfig(),
        PreferenceLossConfig(loss_type="ipo"),
        PreferenceLossConfig(rpo_alpha=1.0),
        PreferenceLossConfig(method="orpo"),
        PreferenceLossConfig(method="cpo", loss_type="simpo", cpo_alpha=0.0),
    ],
)
def test_preference_training_logs_trl_metrics_and_learns(tiny_model_dir, loss):
    lm = load_model(tiny_model_dir)
    pairs = _pairs()
    ref = reference_logps(lm.model, lm.tokenizer, pairs)
    # IPO's squared loss (h - 1/(2 beta))^2 overshoots its target gap at 5e-3 and ends above where it started
    lr = 1e-3 if loss.loss_type == "ipo" else 5e-3
    cfg = TrainConfig(steps=12, batch_size=8, learning_rate=lr, seed=0, lora={"rank": 8, "scale": 20.0})
    prepare_model(lm.model, cfg)
    gap_before = _logp_gap(lm, pairs)
    # the loss on one fixed batch of every pair, before and after (the first and last steps' batches differ)
    fixed = preference_batches(lm.tokenizer, pairs, cfg.model_copy(update={"batch_size": len(pairs)}), ref=ref)(0)
    loss_before = preference_loss(loss)(lm.model, fixed)[0].item()
    rows = []
    result = train(
        lm.model,
        preference_loss(loss),
        preference_batches(lm.tokenizer, pairs, cfg, ref=ref),
        cfg,
        callback=rows.append,
    )
    first, last = rows[0], rows[-1]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "kl",
        "entropy",
        "lr",
        "tokens_per_s",
    ):
        assert key in last and not math.isnan(last[key]), key
    assert result.steps_done == 12 and preference_loss(loss)(lm.model, fixed)[0].item() < loss_before
    # learned: on the same pairs (not the first and last batches, which hold different pairs), chosen gained on rejected
    assert _logp_gap(lm, pairs) > gap_before
    if loss.method == "dpo":
        # step 1's rewards, KL and entropy come from the loss's forward, before its update: policy == reference
        assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4) and first["kl"] == pytest.approx(0.0, abs=1e-6)
        # the logged margin on every pair after training is positive; one 8-pair batch's margin (the last step's) is
        # a noisy sample that flips sign across BLAS builds, so the fixed batch of all 16 pairs is what is checked
        assert preference_loss(loss)(lm.model, fixed)[1]["rewards/margins"].item() > 0
    assert last["kl"] > 0 and last["entropy"] > 0


def test_kl_limit_stops_early_and_kl_is_zero_with_adapters_off(tiny_model_dir, tmp_path):
    lm = load_model(tiny_model_dir)
    pairs = _pairs()
    ref = reference_logps(lm.model, lm.tokenizer, pairs)
    cfg = TrainConfig(steps=50, batch_size=8, learning_rate=2e-2, kl_limit=0.05, lora={"rank": 8, "scale": 20.0})
    prepare_model(lm.model, cfg)
    result = train(
        lm.model,
        preference_loss(PreferenceLossConfig(beta=0.5)),
        preference_batches(lm.tokenizer, pairs, cfg, ref=ref),
        cfg,
        out_dir=tmp_path,
    )
    assert result.stopped == "kl_limit" and result.steps_done < 50
    assert result.history[-1]["kl"] > 0.05 and "KL" in result.reason
    assert result.checkpoint is not None and result.checkpoint.name == f"step_{result.steps_done:06d}"
    # with adapters disabled the model is the reference again: its sequence log-probs match the cache
    with adapters_disabled(lm.model):
        again = reference_logps(lm.model, lm.tokenizer, pairs)
    assert again["chosen_logps"] == pytest.approx(ref["chosen_logps"], abs=1e-3)


def test_unsupported_combinations_are_refused():
    with pytest.raises(ValueError, match="'simpo' belongs to method 'cpo'"):
        preference_loss(PreferenceLossConfig(loss_type="simpo"))
    with pytest.raises(ValueError, match="supports loss_type sigmoid or simpo"):
        preference_loss(PreferenceLossConfig(method="cpo", loss_type="hinge"))


def test_task_splits_do_not_depend_on_the_hash_seed():
    code = "from realign.data.demo import splits; print([e.digits for e in splits('reverse', 20, 5, seed=0)[1]])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": h},
            cwd=REPO,
        ).stdout
        for h in ("1", "2")
    }
    assert len(outs) == 1 and outs.pop().startswith("['")


def test_checkpoints_of_another_config_are_set_aside_not_resumed(tiny_model_dir, tmp_path):
    rows, _ = splits("copy", 32, 1, seed=2)
    examples = [(e.prompt, e.answer) for e in rows]
    resumed = []
    for lr, key in ((1e-3, "data-a"), (1e-3, "data-a"), (2e-3, "data-a"), (2e-3, "data-b")):
        lm = load_model(tiny_model_dir)
        cfg = TrainConfig(steps=2, batch_size=4, learning_rate=lr, seed=1)
        prepare_model(lm.model, cfg)
        result = train(
            lm.model, sft_loss, sft_batches(lm.tokenizer, examples, cfg), cfg, out_dir=tmp_path, resume_key=key
        )
        resumed.append(result.resumed_from)
    # same config and data: the finished run is found; a new lr, then new data: old checkpoints set aside, kept
    assert resumed == [0, 2, 0, 0]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.stale-")]) == 2


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_model_dir, tmp_path):
    rows, _ = splits("copy", 32, 1, seed=2)
    examples = [(e.prompt, e.answer) for e in rows]
    cfg = TrainConfig(steps=6, batch_size=4, learning_rate=1e-3, seed=3, checkpoint_every=2, keep_checkpoints=2)

    def run(out_dir, stop_at=None):
        lm = load_model(tiny_model_dir)
        prepare_model(lm.model, cfg)

        def interrupt(row):
            if row["step"] == stop_at:
                raise KeyboardInterrupt

        try:
            result = train(
                lm.model,
                sft_loss,
                sft_batches(lm.tokenizer, examples, cfg),
                cfg,
                out_dir=out_dir,
                callback=interrupt,
                resume_key="k",
            )
        except KeyboardInterrupt:
            return None, None
        return result, dict(tree_flatten(lm.model.trainable_parameters()))

    _, straight = run(tmp_path / "straight")
    run(tmp_path / "cut", stop_at=5)  # checkpoints at steps 2 and 4, then killed
    ckpts = tmp_path / "cut" / "checkpoints"
    weights = ckpts / "step_000004" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    result, resumed = run(tmp_path / "cut")
    assert result.resumed_from == 2
    assert "step_000004 (weights.safetensors does not match its checksum" in result.resume_warning
    assert result.resume_warning.endswith(f"resuming from {ckpts / 'step_000002'}")
    assert all(mx.array_equal(straight[k], resumed[k]) for k in straight)  # still bit-exact

    for step in ("step_000006", "step_000004"):  # every checkpoint damaged: start over, keep them aside
        (ckpts / step / "state.json").write_text("{not json")
    result, _ = run(tmp_path / "cut")
    assert result.resumed_from == 0 and result.resume_warning.endswith("starting over")
    assert [p.name.startswith("checkpoints.damaged-") for p in (tmp_path / "cut").iterdir()].count(True) == 1


def test_length_grouped_batches_draw_every_example_once_per_epoch_and_pad_little():
    from realign.train.batches import LENGTH_GROUP

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=4 * 8 * LENGTH_GROUP).tolist()  # four groups of 32 batches of 8
    at = batch_indices(len(lengths), 8, seed=3, lengths=lengths)
    epoch = [j for i in range(4 * LENGTH_GROUP) for j in at(i)]
    assert sorted(epoch) == list(range(len(lengths)))  # every example once per epoch, none twice
    flat = batch_indices(len(lengths), 8, seed=3)

    def padded(order):
        rows = [[lengths[j] for j in order(i)] for i in range(4 * LENGTH_GROUP)]
        return sum(max(r) * len(r) - sum(r) for r in rows) / sum(max(r) * len(r) for r in rows)

    # by hand for uniform lengths in [10, 200): a random batch of 8 pads ~ (max - mean) / max ~ 0.45; sorted ~ 0.01
    assert padded(flat) > 0.3 and padded(at) < 0.05
    assert at(5) == batch_indices(len(lengths), 8, seed=3, lengths=lengths)(5)  # a pure function of i
    # an epoch that is not a whole number of groups or batches: still every example once, none twice in a batch
    odd = rng.integers(10, 200, size=8 * LENGTH_GROUP + 13).tolist()
    at_odd = batch_indices(len(odd), 8, seed=1, lengths=odd)
    per_epoch = LENGTH_GROUP + 2  # 32 full batches of the first group, then 13 rows: one batch of 8 and one of 5
    batches = [at_odd(i) for i in range(2 * per_epoch)]
    assert sorted(j for b in batches[:per_epoch] for j in b) == list(range(len(odd)))
    assert sorted(j for b in batches[per_epoch:] for j in b) == list(range(len(odd)))  # the second epoch too
    assert all(len(set(b)) == len(b) for b in batches) and sorted(map(len, batches))[:2] == [5, 5]
    # fewer examples than two batches: nothing to group, the plain permutation order
    assert batch_indices(10, 8, 0, [1] * 10)(0) == batch_indices(10, 8, 0)(0)
    with pytest.raises(ValueError, match="3 lengths for 10 examples"):
        batch_indices(10, 4, 0, [1, 2, 3])


@pytest.mark.parametrize(
    "n, bucket",
    [(1, 1), (16, 16), (21, 21), (32, 32), (33, 34), (63, 64), (65, 68), (101, 104), (1000, 1024), (1025, 1088)],
)
def test_bucket_lengths_pad_at_most_a_sixteenth(n, bucket):
    from realign.model.logprobs import bucket_length

    assert bucket_length(n) == bucket and bucket_length(n) - n <= n / 16
    # at most 16 shapes per doubling: the lengths in (2^k, 2^(k+1)] round to 16 values
    assert len({bucket_length(m) for m in range(65, 129)}) == 16


def _untied_copy(model_dir: Path, out: Path) -> Path:
    """The tiny model with its own lm_head (a perturbed copy of the embedding) instead of the tied embedding."""

    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    weights = mx.load(str(out / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    weights["lm_head.weight"] = embed + 0.05 * mx.random.normal(embed.shape, key=mx.random.key(3))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return out


# KL from the cache against the reference's forward: float32 models agree to float32 rounding; in bfloat16 the
# cached states are float32 copies of bf16 ones and the forward's logits bf16, so they agree to bf16 rounding.
CACHE_CASES = {"lora": (True, "tied", None, 1e-4), "full": (False, "tied", None, 1e-4)}
CACHE_CASES |= {"untied-full": (False, "untied", None, 1e-4), "bf16-lora": (True, "tied", mx.bfloat16, 2e-2)}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cached_reference_hidden_states_give_the_per_step_kl(tiny_model_dir, tmp_path, case):
    """Stage 3's cache of the reference's hidden states at the completion tokens, placed in each batch, gives the
    loop the KL of the reference's forward pass (LoRA: the base under the adapters; full: a frozen copy)."""
    from realign.model.logprobs import hidden_cache_bytes, output_head
    from realign.train.batches import POLICY_LOGITS, REF_HIDDEN

    lora, head, dtype, rel = CACHE_CASES[case]
    model_dir = _untied_copy(tiny_model_dir, tmp_path / "untied") if head == "untied" else tiny_model_dir

    def load():
        lm = load_model(model_dir)
        if dtype is not None:
            lm.model.set_dtype(dtype)
        return lm

    lm = load()
    assert ("lm_head" in lm.model) == (head == "untied")
    pairs = _pairs()
    plain = reference_logps(lm.model, lm.tokenizer, pairs, batch_size=5)
    cached = reference_logps(lm.model, lm.tokenizer, pairs, batch_size=5, hidden=True)
    for key in ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-4), key
    # what stage 3 weighs against dpo.kl_cache_max_gb before caching: 4 bytes per number it then stores
    stored = sum(len(v) for k in ("chosen_ref_hidden", "rejected_ref_hidden") for v in cached[k])
    assert hidden_cache_bytes(lm.model, lm.tokenizer, pairs) == 4 * stored > 0
    # pair 3's cached states are the backbone's at its chosen completion positions, and the head makes them logits
    one = pair_batch(lm.tokenizer, pairs[3:4])
    h = lm.model.model(one.tokens[:, :-1])
    at = np.flatnonzero(np.array(one.mask[0]) > 0)
    assert np.allclose(cached["chosen_ref_hidden"][3], np.array(h[0].astype(mx.float32))[at].reshape(-1), atol=1e-5)
    own = np.array(lm.model(one.tokens[:, :-1]).astype(mx.float32))
    assert np.allclose(np.array(output_head(lm.model)(h).astype(mx.float32)), own, atol=1e-4)

    reference = None if lora else load().model
    cfg = TrainConfig(steps=6, batch_size=8, learning_rate=2e-2 if lora else 2e-3, seed=0)
    cfg = cfg.model_copy(update={"lora": cfg.lora if lora else None})
    prepare_model(lm.model, cfg)
    loss = preference_loss(PreferenceLossConfig(beta=0.5))
    train(lm.model, loss, preference_batches(lm.tokenizer, pairs, cfg, ref=cached), cfg, reference=reference)
    batch = preference_batches(lm.tokenizer, pairs, cfg, ref=cached)(2)
    # packed: each row's completion positions from the front, zeros after
    counts = np.array(batch["mask"]).sum(axis=1).astype(int)
    packed = np.array(batch[REF_HIDDEN])
    assert packed.shape[:2] == (len(counts), counts.max()) and packed.shape[2] == stored // sum(
        int(plain[k].sum()) for k in ("chosen_tokens", "rejected_tokens")
    )
    assert all(not packed[r, c:].any() and packed[r, c - 1].any() for r, c in enumerate(counts))
    logits = loss(lm.model, batch)[1][POLICY_LOGITS]
    without = {k: v for k, v in batch.items() if k != REF_HIDDEN}
    exact = token_stats(lm.model, without, reference, logits)  # the reference's forward over the batch
    from_cache = token_stats(lm.model, batch, reference, logits)
    assert exact["kl"] > 0.01, exact
    assert from_cache["kl"] == pytest.approx(exact["kl"], rel=rel)
    assert from_cache["entropy"] == pytest.approx(exact["entropy"], rel=1e-5)
    # a cache made for other rows (another max_seq_len) is refused, naming the stage to run again
    with pytest.raises(ValueError, match="stage 3"):
        preference_batches(lm.tokenizer, pairs, cfg.model_copy(update={"max_seq_len": 12}), ref=cached)


def test_a_model_that_does_more_after_its_head_is_not_cached(tiny_model_dir):
    from realign.model.logprobs import hidden_cache_problem

    lm = load_model(tiny_model_dir)
    assert hidden_cache_problem(lm.model, pair_batch(lm.tokenizer, _pairs()[:1]).tokens) is None
    capped = type(lm.model).__call__
    try:  # scaling the logits after the head, as Cohere's logit_scale does
        type(lm.model).__call__ = lambda self, x, *a, **k: 0.5 * capped(self, x, *a, **k)
        assert "differ" in hidden_cache_problem(lm.model, pair_batch(lm.tokenizer, _pairs()[:1]).tokens)
        with pytest.raises(ValueError, match="cannot stand in for its logits"):
            reference_logps(lm.model, lm.tokenizer, _pairs()[:2], hidden=True)
    finally:
        type(lm.model).__call__ = capped
