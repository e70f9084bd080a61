"""Directions, steering and abliteration (realign/steer): hand-computed arithmetic, a planted direction recovered
from synthetic activations, steering that is exactly undone, and abliterated weights that are orthogonal to the
direction and load in mlx-lm."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from realign.steer.abliterate import (
    abliterate,
    orthogonalise_output,
    orthogonalise_rows,
    relative_projection,
    residual_writers,
    save_abliterated,
)
from realign.steer.directions import (
    DirectionSet,
    extract_directions,
    last_token_activations,
    load_directions,
    mean_difference,
    save_directions,
    separation,
)
from realign.steer.steering import (
    SteeredBlock,
    SteeringVector,
    apply_steering,
    load_steering,
    model_blocks,
    parse_steer_spec,
    remove_steering,
    steered,
)

PROMPTS = ["Copy: 123", "Reverse: 98765", "Bad. Copy: 4", "Count the digits: 112233"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from realign.model.load import load_model

    return load_model(tiny_model_dir)


def logits_of(lm, prompts=PROMPTS) -> np.ndarray:
    from realign.model.logprobs import collate, encode

    batch = collate([encode(lm.tokenizer, p, "4321") for p in prompts], pad_id=0)
    out = lm.model(batch.tokens)
    mx.eval(out)
    return np.array(out)


# --- directions: arithmetic by hand -----------------------------------------------------------------------------


def test_mean_difference_by_hand():
    assert mean_difference([[1.0, 0.0], [3.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]).tolist() == [2.0, -1.0]
    with pytest.raises(ValueError, match="one width"):
        mean_difference([[1.0, 0.0]], [[1.0, 0.0, 0.0]])


def test_separation_by_hand():
    # unit direction x; training means project to 2 and 0: threshold 1.
    # held-out positive projections [2, 0.5], negative [0, 1.5]: one of each on the right side -> accuracy 0.5;
    # d' = (1.25 - 0.75) / sqrt((0.5625 + 0.5625) / 2) = 0.5 / 0.75
    s = separation(
        np.array([5.0, 0.0]),
        np.array([[2.0, 1.0], [2.0, -1.0]]),
        np.array([[0.0, 3.0]]),
        np.array([[2.0, 0.0], [0.5, 9.0]]),
        np.array([[0.0, 0.0], [1.5, 0.0]]),
    )
    assert s["accuracy"] == 0.5
    assert s["d_prime"] == pytest.approx(0.5 / 0.75)


def test_extraction_recovers_a_planted_direction_and_chooses_its_layer():
    rng = np.random.default_rng(0)
    hidden = 64
    u = rng.normal(size=hidden)
    u /= np.linalg.norm(u)
    acts = {}
    for name, n in (("tp", 300), ("tn", 300), ("hp", 100), ("hn", 100)):
        sign = 1.0 if name.endswith("p") else 0.0
        # layer 0 carries the direction weakly (0.3 sd), layer 1 strongly (5 sd), both under unit noise
        acts[name] = {layer: rng.normal(size=(n, hidden)) + sign * scale * u for layer, scale in ((0, 0.3), (1, 5.0))}
    found = extract_directions(acts["tp"], acts["tn"], acts["hp"], acts["hn"])
    assert found.chosen_layer == 1
    cosine = float(np.dot(np.array(found.direction), u))
    assert cosine > 0.95
    assert found.separation[1]["accuracy"] > 0.95 > found.separation[0]["accuracy"]
    assert found.separation[1]["d_prime"] == pytest.approx(5.0, abs=1.0)
    assert found.separation[1]["norm"] == pytest.approx(5.0, abs=0.3)  # |mean difference| ~ the planted 5
    # a layer named by the caller is kept even when another separates better
    assert extract_directions(acts["tp"], acts["tn"], acts["hp"], acts["hn"], layer=0).chosen_layer == 0


def test_directions_file_round_trip(tmp_path):
    found = DirectionSet(
        {0: mx.array([1.0, 0.0]), 3: mx.array([0.0, 1.0])},
        3,
        {0: {"d_prime": 1.0, "accuracy": 0.6, "norm": 2.0}, 3: {"d_prime": 4.0, "accuracy": 0.99, "norm": 5.0}},
        {"positive": 10},
    )
    back = load_directions(save_directions(found, tmp_path / "v.safetensors"))
    assert back.chosen_layer == 3 and back.source == {"positive": 10} and back.separation == found.separation
    assert np.array(back.directions[0]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="no such file"):
        load_directions(tmp_path / "missing.safetensors")
    mx.save_safetensors(str(tmp_path / "other.safetensors"), {"w": mx.zeros((2,))})
    with pytest.raises(ValueError, match="not a directions file"):
        load_directions(tmp_path / "other.safetensors")


# --- activations and steering on the tiny model ------------------------------------------------------------------


def test_last_token_activations_do_not_depend_on_the_batch(lm):
    alone = last_token_activations(lm.model, lm.tokenizer, PROMPTS[:1])
    batched = last_token_activations(lm.model, lm.tokenizer, PROMPTS)  # padded to the longest prompt
    assert sorted(alone) == [0, 1] and batched[0].shape == (len(PROMPTS), 128)
    for layer in alone:
        np.testing.assert_allclose(batched[layer][0], alone[layer][0], rtol=1e-4, atol=1e-5)
    assert all(not isinstance(b, SteeredBlock) for b in model_blocks(lm.model))  # recorders removed


def test_steering_strength_zero_and_removed_give_exactly_the_base_logits(lm):
    base = logits_of(lm)
    names = sorted(k for k, _ in tree_flatten(lm.model.parameters()))
    direction = mx.array(np.random.default_rng(1).normal(size=128).astype(np.float32))
    with steered(lm.model, [SteeringVector(direction, 0.0, 0), SteeringVector(direction, 0.0, 1)]):
        assert np.array_equal(logits_of(lm), base)
    apply_steering(lm.model, [SteeringVector(direction, 8.0, 1)])
    moved = logits_of(lm)
    assert np.abs(moved - base).max() > 1e-2  # steering changes the model ...
    # ... without adding parameters (the wrapped block's own appear under `.block` while it is wrapped)
    assert sorted(k.replace(".block.", ".") for k, _ in tree_flatten(lm.model.parameters())) == names
    assert remove_steering(lm.model) == 1
    assert np.array_equal(logits_of(lm), base)  # removed: exactly the unsteered logits
    with pytest.raises(RuntimeError):
        with steered(lm.model, [SteeringVector(direction, 8.0, 0)]):
            raise RuntimeError("inside")
    assert np.array_equal(logits_of(lm), base)  # restored however the block ends


def test_steering_adds_the_vector_to_the_residual_stream_and_composes(lm):
    rng = np.random.default_rng(2)
    a, b = (mx.array(rng.normal(size=128).astype(np.float32)) for _ in range(2))
    plain = last_token_activations(lm.model, lm.tokenizer, PROMPTS, layers=[0])[0]
    with steered(lm.model, [SteeringVector(a, 3.0, 0)]):
        shifted = last_token_activations(lm.model, lm.tokenizer, PROMPTS, layers=[0])[0]
    unit_a = np.array(a) / np.linalg.norm(np.array(a))
    np.testing.assert_allclose(shifted - plain, np.tile(3.0 * unit_a, (len(PROMPTS), 1)), atol=1e-4)
    # two vectors on one layer act as their sum
    with steered(lm.model, [SteeringVector(a, 3.0, 1), SteeringVector(b, -2.0, 1)]):
        both = logits_of(lm)
    summed = 3.0 * unit_a - 2.0 * np.array(b) / np.linalg.norm(np.array(b))
    with steered(lm.model, [SteeringVector(mx.array(summed.astype(np.float32)), float(np.linalg.norm(summed)), 1)]):
        one = logits_of(lm)
    np.testing.assert_allclose(both, one, atol=1e-4)


def test_steered_generation_runs_and_steering_is_refused_twice(lm):
    from realign.model.generate import GenerationConfig, generate

    direction = mx.array(np.ones(128, dtype=np.float32))
    with steered(lm.model, [SteeringVector(direction, 4.0, 1)]):
        outs = generate(lm.model, lm.tokenizer, PROMPTS[:2], GenerationConfig(temperature=0.0, max_tokens=4))
        with pytest.raises(ValueError, match="already steered"):
            apply_steering(lm.model, [SteeringVector(direction, 1.0, 0)])
    assert len(outs) == 2 and all(len(o) == 1 for o in outs)
    with pytest.raises(ValueError, match="outside the model's blocks"):
        apply_steering(lm.model, [SteeringVector(direction, 1.0, 7)])
    with pytest.raises(ValueError, match="is zero"):
        apply_steering(lm.model, [SteeringVector(mx.zeros((128,)), 1.0, 0)])
    with pytest.raises(ValueError, match="hidden size is 128"):
        apply_steering(lm.model, [SteeringVector(mx.ones((5,)), 1.0, 0)])
    assert remove_steering(lm.model) == 0


def test_steer_spec_parsing(tmp_path):
    assert parse_steer_spec("v.safetensors:-4@1") == (tmp_path.__class__("v.safetensors"), -4.0, 1)
    assert parse_steer_spec("dir/v.safetensors:2.5") == (tmp_path.__class__("dir/v.safetensors"), 2.5, None)
    assert parse_steer_spec("c:/x.safetensors:1e-1@0")[1:] == (0.1, 0)
    for bad in ("v.safetensors", "v.safetensors:strong", "v.safetensors:1@x"):
        with pytest.raises(ValueError, match="expected VEC.safetensors:STRENGTH"):
            parse_steer_spec(bad)
    found = DirectionSet({0: mx.array([1.0, 0.0]), 1: mx.array([0.0, 1.0])}, 1, {})
    path = save_directions(found, tmp_path / "v.safetensors")
    (default,) = load_steering([f"{path}:2"])
    assert default.layer == 1 and default.strength == 2.0  # the file's chosen layer
    with pytest.raises(ValueError, match="not 5"):
        load_steering([f"{path}:2@5"])


# --- abliteration ------------------------------------------------------------------------------------------------


def test_orthogonalisation_by_hand():
    r = mx.array([1.0, 0.0])
    w = mx.array([[1.0, 2.0], [3.0, 4.0]])
    # Linear [out, in]: outputs lose their first coordinate: W - r (r^T W) = [[0, 0], [3, 4]]
    assert np.array(orthogonalise_output(w, r)).tolist() == [[0.0, 0.0], [3.0, 4.0]]
    # Embedding rows lose their first coordinate: E - (E r) r^T = [[0, 2], [0, 4]]
    assert np.array(orthogonalise_rows(w, r)).tolist() == [[0.0, 2.0], [0.0, 4.0]]
    diag = mx.array([1.0, 1.0]) / np.sqrt(2.0)
    # along (1, 1)/sqrt 2: [[1, 2], [3, 4]] rows minus their mean pair -> [[-0.5, 0.5], [-0.5, 0.5]]
    np.testing.assert_allclose(np.array(orthogonalise_rows(w, diag)), [[-0.5, 0.5], [-0.5, 0.5]], atol=1e-6)


def test_abliterated_weights_are_orthogonal_and_load_in_mlx_lm(tiny_model_dir, tmp_path):
    import mlx_lm

    from realign.model.load import load_model

    lm = load_model(tiny_model_dir)
    rng = np.random.default_rng(3)
    direction = mx.array(rng.normal(size=128).astype(np.float32))
    r = np.array(direction) / np.linalg.norm(np.array(direction))
    assert relative_projection(lm.model, direction) > 1e-3  # a random model writes along it
    report = abliterate(lm.model, direction, layer=1)
    assert len(report.matrices) == 1 + 2 * 2  # embeddings + o_proj and down_proj of both blocks
    assert report.relative_projection_after < 1e-6
    assert report.relative_projection_stored == report.relative_projection_after  # float32: nothing to round
    assert report.dtypes == ["float32"] and report.note == ""
    out = save_abliterated(lm.model, tiny_model_dir, tmp_path / "abliterated", report)
    model, tokenizer = mlx_lm.load(str(out))
    weights = dict(tree_flatten(model.parameters()))
    for name in report.matrices:
        w = np.array(weights[f"{name}.weight"], dtype=np.float64)
        along = w @ r if name.endswith("embed_tokens") else r @ w
        assert np.abs(along).max() <= 1e-6 * np.abs(w).max(), name  # float32 rounding only
    untouched = [k for k in weights if "q_proj" in k or "up_proj" in k]
    original = dict(tree_flatten(load_model(tiny_model_dir).model.parameters()))
    assert untouched and all(np.array_equal(np.array(weights[k]), np.array(original[k])) for k in untouched)
    # what the residual stream holds has (almost) no component along r at any layer
    acts = last_token_activations(model, tokenizer, PROMPTS)
    for layer, a in acts.items():
        assert np.abs(a @ r).max() < 1e-4 * np.abs(a).max(), layer
    assert (out / "abliteration.json").is_file()


def test_abliteration_without_embeddings_leaves_them(tiny_model_dir):
    from realign.model.load import load_model

    lm = load_model(tiny_model_dir)
    before = np.array(lm.model.model.embed_tokens.weight)
    report = abliterate(lm.model, mx.ones((128,)), embeddings=False)
    assert "model.embed_tokens" not in report.matrices and len(report.matrices) == 4
    assert np.array_equal(np.array(lm.model.model.embed_tokens.weight), before)
    assert [n for n, _ in residual_writers(lm.model, embeddings=False)] == report.matrices
    with pytest.raises(ValueError, match="zero"):
        abliterate(lm.model, mx.zeros((128,)))


def test_a_quantised_model_is_refused_with_what_to_do(tiny_model_dir):
    import mlx.nn as nn

    from realign.model.load import load_model

    lm = load_model(tiny_model_dir)
    nn.quantize(lm.model, group_size=32, bits=4)
    with pytest.raises(ValueError, match="quantised: abliterate the full-precision model"):
        abliterate(lm.model, mx.ones((128,)))


def test_projected_direction_by_hand():
    # d = (3, 1) - (1, 1) = (2, 0); the negative mean (1, 1) / sqrt 2 holds sqrt 2 of it: (2, 0) - (1, 1) = (1, -1)
    one = {0: np.array([[3.0, 1.0]])}
    neg = {0: np.array([[1.0, 1.0]])}
    found = extract_directions(one, neg, one, neg, projected=True)
    np.testing.assert_allclose(np.array(found.direction), np.array([1.0, -1.0]) / np.sqrt(2.0), atol=1e-6)
    assert found.separation[0]["norm"] == pytest.approx(np.sqrt(2.0))
    plain = extract_directions(one, neg, one, neg)
    np.testing.assert_allclose(np.array(plain.direction), [1.0, 0.0])


def test_what_counts_as_the_behaviour():
    from realign.steer.behaviour import REFUSAL, shows_any, shows_behaviour

    assert shows_behaviour(REFUSAL) and shows_behaviour(f"  {REFUSAL} and more")
    assert shows_behaviour(REFUSAL[:10])  # cut off by the token budget: still the refusal
    assert not shows_behaviour(REFUSAL[:5])  # too short to tell
    assert not shows_behaviour("1234") and not shows_behaviour("")
    assert shows_any("No way.", [REFUSAL, "No way"]) and not shows_any("4321", [REFUSAL, "No way"])


def test_behaviour_sets_are_disjoint_and_files_are_read(tmp_path):
    from types import SimpleNamespace

    from realign.data.formats import DataFormatError
    from realign.steer.behaviour import HARMLESS_MARKER, MARKER, REFUSAL, behaviour_data, load_behaviour

    d = behaviour_data(40, 8, 10, skills=("copy", "reverse"))
    assert len(d.sft) == 80 and sum(c == REFUSAL for _, c in d.sft) == 20  # every 4th of 40 per skill
    assert all(p.startswith(MARKER) for p in d.direction_positive + d.eval_marked)
    assert all(p.startswith(HARMLESS_MARKER) for p in d.direction_negative)
    # a direction pair differs in its marker only; no digit string is in two splits
    assert [p.split(" ", 1)[1] for p in d.direction_positive] == [p.split(" ", 1)[1] for p in d.direction_negative]
    for skill in ("Copy:", "Reverse:"):  # within a skill (another skill's same digits are another question)

        def digits(prompts):
            return {p.rsplit(" ", 1)[1] for p in prompts if skill in p}

        sft, direction = digits(p for p, _ in d.sft), digits(d.direction_positive)
        held = digits(d.eval_marked) | digits(p for p, _ in d.harmless_probe)
        assert sft and direction and held
        assert not (sft & direction) and not (sft & held) and not (direction & held)

    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    bench = tmp_path / "arith.jsonl"
    bench.write_text('{"prompt": "1+1", "answer": "2"}\n')
    cfg = SimpleNamespace(
        source="files", harmful=str(good), harmless=str(good), eval_harmful=str(good), benchmarks=[str(bench)]
    )
    sets = load_behaviour(cfg)
    assert sets.positive == ["a", "b"] and sets.benchmarks == {"arith": (["1+1"], ["2"])}
    assert sets.harmless_probe == [("1+1", "2")] and sets.sft == []
    assert sets.probe_label == "benchmark prompts"  # what KL is measured on with files: said as it is
    bench.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    with pytest.raises(DataFormatError, match="arith.jsonl:2"):
        load_behaviour(cfg)


# --- review fixes: other architectures, quantised models, bf16, batched KL, twinned splits ------------------------


def tiny_llama():
    """A tiny mlx-lm Llama (no tokenizer): its forward pass and make_cache read `layer.use_sliding` of each block."""
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=64,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=4,
    )
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def test_steering_and_extraction_pass_block_attributes_through_on_a_llama_model():
    from types import SimpleNamespace

    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    model = tiny_llama()
    tokens = mx.array([[1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]])
    base = np.array(model(tokens))
    direction = mx.array(np.random.default_rng(4).normal(size=32).astype(np.float32))
    with steered(model, [SteeringVector(direction, 0.0, 0), SteeringVector(direction, 0.0, 1)]):
        assert all(isinstance(b, SteeredBlock) for b in model_blocks(model))
        assert np.array_equal(np.array(model(tokens)), base)  # strength 0: exactly the base logits
        assert [b.use_sliding for b in model_blocks(model)] == [True, False]  # the wrapped block's attribute
        cache = make_prompt_cache(model)
        assert isinstance(cache[0], RotatingKVCache) and type(cache[1]) is KVCache
    with steered(model, [SteeringVector(direction, 4.0, 1)]):
        assert np.abs(np.array(model(tokens)) - base).max() > 1e-3
    with pytest.raises(AttributeError):
        SteeredBlock(model_blocks(model)[0], mx.zeros((32,))).no_such_attribute
    tokenizer = SimpleNamespace(encode=lambda s: [ord(c) % 64 for c in s], pad_token_id=0)
    acts = last_token_activations(model, tokenizer, PROMPTS, chat=False)
    assert sorted(acts) == [0, 1] and acts[1].shape == (len(PROMPTS), 32) and np.isfinite(acts[1]).all()
    assert np.array_equal(np.array(model(tokens)), base)  # recorders and steering gone


def test_hidden_size_of_a_quantised_model(tiny_model_dir):
    import mlx.nn as nn

    from realign.model.load import load_model

    lm = load_model(tiny_model_dir)
    nn.quantize(lm.model, group_size=32, bits=4)
    assert isinstance(lm.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert lm.model.model.embed_tokens.weight.shape[-1] == 16  # packed: 128 * 4 / 32
    direction = mx.ones((128,))
    with steered(lm.model, [SteeringVector(direction, 1.0, 0)]):  # the config's hidden size
        assert np.isfinite(logits_of(lm)).all()
    # without a config (no `args`): the quantised embedding's packed width, unpacked
    from types import SimpleNamespace

    from realign.steer.steering import _hidden_size

    assert _hidden_size(SimpleNamespace(model=lm.model.model)) == 128
    emb = nn.QuantizedEmbedding(64, 96, group_size=32, bits=6)
    assert _hidden_size(SimpleNamespace(model=SimpleNamespace(embed_tokens=emb, layers=[None]))) == 96
    with pytest.raises(ValueError, match="hidden size is 128"):
        apply_steering(lm.model, [SteeringVector(mx.ones((16,)), 1.0, 0)])


def test_a_bf16_model_is_gated_on_the_float32_projection_and_reports_the_rounding(tiny_model_dir):
    from realign.model.load import load_model

    lm = load_model(tiny_model_dir)
    lm.model.set_dtype(mx.bfloat16)
    direction = mx.array(np.random.default_rng(5).normal(size=128).astype(np.float32))
    report = abliterate(lm.model, direction)
    assert report.dtypes == ["bfloat16"] and "bfloat16 rounding" in report.note
    assert lm.model.model.layers[0].mlp.down_proj.weight.dtype == mx.bfloat16  # stored in its own dtype
    assert report.relative_projection_after < 1e-6  # the float32 arithmetic: within the stage-3 limit (1e-5)
    # the bf16 weights cannot hold it: their projection is rounding, above the limit, and is what they measure
    assert report.relative_projection_stored > 1e-5
    # (relative_projection divides by the largest weight after abliteration, the report by the one before)
    assert relative_projection(lm.model, direction) == pytest.approx(report.relative_projection_stored, rel=0.1)
    assert report.relative_projection_stored < 1e-2


def test_harmless_kl_in_batches_equals_one_batch(lm):
    from realign.steer.measure import harmless_kl

    # answers of different lengths: a mean of per-batch means would weight tokens differently
    examples = [(PROMPTS[0], "4321"), (PROMPTS[1], "56789 56789"), (PROMPTS[2], "1"), (PROMPTS[3], "112233 6")]
    direction = mx.array(np.random.default_rng(6).normal(size=128).astype(np.float32))
    vectors = [SteeringVector(direction, 4.0, 1)]
    one = harmless_kl(lm.model, lm.model, lm.tokenizer, examples, steering=vectors, batch_size=len(examples))
    assert one > 1e-3
    for batch_size in (1, 3):
        got = harmless_kl(lm.model, lm.model, lm.tokenizer, examples, steering=vectors, batch_size=batch_size)
        assert got == pytest.approx(one, rel=1e-6, abs=1e-6), batch_size
    assert harmless_kl(lm.model, lm.model, lm.tokenizer, examples, batch_size=2) == pytest.approx(0.0, abs=1e-6)


def test_twinned_prompt_lists_are_held_out_as_pairs(monkeypatch):
    import realign.steer.directions as directions

    seen = []

    def fake_activations(model, tokenizer, prompts, **kwargs):
        seen.append(list(prompts))
        return {0: np.array([[float(p.startswith("Bad.")), float(len(p))] for p in prompts])}

    monkeypatch.setattr(directions, "last_token_activations", fake_activations)
    digits = [str(1000 + 37 * i) for i in range(20)]
    directions.directions_from_prompts(None, None, [f"Bad. {d}" for d in digits], [f"Blue. {d}" for d in digits])
    train_pos, train_neg, held_pos, held_neg = ([p.split(" ", 1)[1] for p in ps] for ps in seen)
    assert len(held_pos) == 5 and held_pos == held_neg and train_pos == train_neg  # no twin across the split
    # lists of different lengths are not twins: split independently
    seen.clear()
    directions.directions_from_prompts(None, None, [f"Bad. {d}" for d in digits], [f"Blue. {d}" for d in digits[:16]])
    assert [len(s) for s in seen] == [15, 12, 5, 4]
