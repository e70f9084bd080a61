"""Model size, memory estimate (hand-computed) and machine selection for 7B ... 405B, inference and training."""

import pytest

from hardware.selection import select_machine
from hardware.sizing import (
    KNOWN_SHAPES,
    LoRASpec,
    ModelSize,
    assumed_architecture,
    lora_params,
    memory_estimate,
    parse_size,
    size_from_config,
    with_quantization,
)


def test_parse_size():
    assert parse_size("Curate DPO pairs for Qwen 7B") == 7.0
    assert parse_size("llama-3.1-405b") == 405.0 and parse_size("560M") == 0.56
    with pytest.raises(ValueError, match="no model size"):
        parse_size("a model")


def test_parameter_count_of_the_tiny_model(tiny_model_dir):
    import json

    import mlx.core as mx

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    counted = size_from_config(cfg).params
    actual = sum(v.size for v in mx.load(str(tiny_model_dir / "model.safetensors")).values())
    assert counted == actual == 754_816


def test_memory_estimate_by_hand():
    # 7B-like: 28 layers, 4 KV heads x 128, hidden 3584, MLP 18944, bf16
    s = ModelSize(7.6e9, 2.0, layers=28, hidden=3584, intermediate=18944, kv_heads=4, head_dim=128)
    m = memory_estimate(s, batch=32, seq_len=1024)
    assert m.weights_gb == pytest.approx(15.2)
    assert m.kv_cache_gb == pytest.approx(2 * 28 * 4 * 128 * 1024 * 32 * 2 / 1e9)  # 1.879
    assert m.activations_gb == pytest.approx(32 * 1024 * (3584 + 18944) * 2 / 1e9)  # 1.476
    assert m.total_gb == pytest.approx(15.2 + 1.8790 + 1.4763, abs=1e-3)
    request_only = memory_estimate(ModelSize(70e9), batch=4, seq_len=2048)
    assert request_only.total_gb == 140.0 and request_only.kv_cache_gb is None and "not estimated" in request_only.note


@pytest.mark.parametrize(
    "params_b,machines,mode",
    [
        (7, ["m4-max"], "separate"),
        (30, ["m4-max"], "separate"),
        (70, ["m3-ultra"], "separate"),  # 140 GB in fp16 > 128 GB
        (200, ["m3-ultra"], "separate"),  # 400 GB fits 512 GB
        (405, ["m4-max", "m3-ultra"], "sharded"),
    ],
)
def test_machine_selection(params_b, machines, mode):
    sel = select_machine(params_b, params_b * 2.0)  # fp16 weights
    assert (sel.machines, sel.mode) == (machines, mode)
    assert sel.environment == {
        "MLX_METAL_PREALLOCATE": "1",
        "MLX_METAL_FAST_SYNCH": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_a_quantised_70b_that_fits_stays_on_the_fast_machine_and_gradient_sync_shards():
    sel = select_machine(70, 40.0)  # 4-bit
    assert sel.machines == ["m4-max"] and sel.batch_size == {"m4-max": 32}
    assert select_machine(7, 14, syncs_gradients=True).mode == "sharded"


def test_plan_for_a_7b_request_splits_by_throughput_and_prices_busy_hours():
    from hardware.plan import make_plan

    p = make_plan(
        "Qwen 7B", 15000, throughput={"m4-max": 1.95, "m3-ultra": 1.03}, price_per_hour={"m4-max": 0.5, "m3-ultra": 0.8}
    )
    assert p.machines == ["m4-max"] and p.mode == "separate"
    assert p.split == {"m4-max": 9815, "m3-ultra": 5185}
    assert p.estimated_seconds == pytest.approx(max(9815 / 1.95, 5185 / 1.03))
    assert p.cost == pytest.approx(0.5 * 9815 / 1.95 / 3600 + 0.8 * 5185 / 1.03 / 3600)
    # "Qwen 7B" names a size and a family: Qwen2.5-7B's shape (28 layers, 4 KV heads x 128) gives the KV cache
    assert "Qwen2.5-7B" in p.memory["note"] and p.memory["batch"] == 32
    assert p.memory["kv_cache_gb"] == pytest.approx(2 * 28 * 4 * 128 * 1024 * 32 * 2 / 1e9)
    assert p.memory["weights_gb"] == pytest.approx(7e9 * 2 / 1e9)  # the requested 7B, not Qwen2.5-7B's 7.6B


def test_plan_for_405b_does_not_invent_a_throughput():
    from hardware.plan import make_plan

    p = make_plan("405B", 1000)
    assert p.mode == "sharded" and p.split == {"m4-max+m3-ultra": 1000}
    assert p.estimated_seconds is None and p.cost is None and "not measured" in p.throughput_source
    q = make_plan("405B", 1000, throughput={"m4-max+m3-ultra": 0.5}, price_per_hour={"m4-max": 1.0, "m3-ultra": 1.0})
    assert q.estimated_seconds == 2000 and q.cost == pytest.approx(2.0 * 2000 / 3600)


def test_plan_cli(tiny_model_dir):
    import json

    from conftest import run_cli

    proc = run_cli("plan", "--model", str(tiny_model_dir), "--examples", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["params_b"] == pytest.approx(754_816 / 1e9) and plan["memory"]["kv_cache_gb"] > 0
    bad = run_cli("plan", "--model", "7B", "--examples", "10", "--throughput", "m4-max=fast")
    assert bad.returncode == 2 and "expected POOL=NUMBER" in bad.stderr


# --- memory-aware planning: quantisation and training ------------------------------------------------------------

# Llama 3.1 70B (KNOWN_SHAPES, the shape a bare "70B" borrows): 80 blocks, hidden 8192, MLP 28672,
# 64 heads and 8 KV heads of 128, vocabulary 128256.
L, H, MLP, A, KV, HD, V = 80, 8192, 28672, 64, 8, 128, 128256


def test_known_shapes_give_the_published_parameter_counts():
    # totals of the models' safetensors on Hugging Face
    assert size_from_config(KNOWN_SHAPES["Llama-3.1-8B"]).params == 8_030_261_248
    assert size_from_config(KNOWN_SHAPES["Llama-3.1-70B"]).params == 70_553_706_496
    assert size_from_config(KNOWN_SHAPES["Qwen2.5-7B"]).params == 7_615_616_512
    s = assumed_architecture(70e9, "70B")
    assert (s.params, s.layers, s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim, s.vocab) == (
        70e9,
        L,
        H,
        MLP,
        A,
        KV,
        HD,
        V,
    )
    assert "Llama-3.1-70B" in s.arch_note
    assert "Qwen2.5-72B" in assumed_architecture(72e9, "Qwen 72B").arch_note  # the family named wins


def test_quantisation_bytes_per_weight():
    base = ModelSize(70e9)
    # MLX affine quantisation, groups of 64: bits/8 bytes + a 16-bit scale and a 16-bit bias per group
    assert with_quantization(base, "4bit").bytes_per_param == 4 / 8 + 4 / 64  # 0.5625
    assert with_quantization(base, "8bit").bytes_per_param == 8 / 8 + 4 / 64  # 1.0625
    assert with_quantization(base, "4bit", group_size=32).bytes_per_param == 4 / 8 + 4 / 32
    assert with_quantization(base, "fp32").bytes_per_param == 4.0
    q4 = with_quantization(base, "4bit")
    assert with_quantization(q4, "none").bytes_per_param == 2.0 and not with_quantization(q4, "bf16").quantised
    assert with_quantization(base, None) is base
    with pytest.raises(ValueError, match="quantization '7bit'|7-bit"):
        with_quantization(base, "7bit")
    with pytest.raises(ValueError, match="use one of"):
        with_quantization(base, "int-ish")


def test_quantisation_from_a_model_directory_config():
    cfg = {**KNOWN_SHAPES["Llama-3.1-8B"], "quantization": {"group_size": 64, "bits": 4}}
    s = size_from_config(cfg)
    assert s.quant_bits == 4 and s.bytes_per_param == 4 / 8 + 4 / 64 and s.key().bits == 4


def test_lora_parameter_count_matches_mlx_lm_adapters_on_the_tiny_model(tiny_model_dir):
    """lora_params' formula against the adapters realign's prepare_model really adds (mlx-lm's LoRALinear)."""
    import json

    from mlx.utils import tree_flatten

    from realign.model.load import load_model
    from realign.train.loop import TrainConfig, prepare_model

    size = size_from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    for layers in (-1, 1):
        cfg = TrainConfig()
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"layers": layers})})
        lm = load_model(tiny_model_dir)
        prepare_model(lm.model, cfg)
        trainable = sum(v.size for _, v in tree_flatten(lm.model.trainable_parameters()))
        assert trainable == lora_params(size, LoRASpec(cfg.lora.rank, layers))


def test_training_defaults_mirror_realigns():
    from hardware.sizing import LORA_LAYERS, LORA_RANK, TRAIN_BATCH_SIZE, TRAIN_SEQ_LEN
    from realign.train.loop import LoRAConfig, TrainConfig

    t, lora = TrainConfig(), LoRAConfig()
    assert (t.batch_size, t.max_seq_len, lora.rank, lora.layers) == (
        TRAIN_BATCH_SIZE,
        TRAIN_SEQ_LEN,
        LORA_RANK,
        LORA_LAYERS,
    )


def activations_by_hand(s, b, blocks, lora=False):
    """Bytes kept for backward (hardware.sizing.training_activation_bytes), written out for the 70B shape:
    per block sb(8h + 4*a*hd + 4*kv*hd + 8I) + 2as^2b (LoRA: + sb(16h + 2*a*hd + 2I), the fp32 copies of the adapted
    projections' inputs less the 16-bit ones the frozen base no longer keeps), then 4sbh (final norm and head
    inputs) + 16sbV (logits and their gradient)."""
    per_block = s * b * (8 * H + 4 * A * HD + 4 * KV * HD + 8 * MLP) + 2 * A * s * s * b
    if lora:
        per_block += s * b * (16 * H + 2 * A * HD + 2 * MLP)
    return blocks * per_block + 4 * s * b * H + 16 * s * b * V


def test_70b_4bit_lora_and_bf16_full_plans_by_hand():
    """The acceptance case: `realign plan --model 70B --quantization 4bit --method lora` vs bf16 full fine-tuning,
    at realign's training defaults: batch 8, sequences of up to 512 tokens."""
    from hardware.plan import make_plan

    s, b = 512, 8
    # per block: 4096 tokens x 331,776 bytes + 2 x 64 x 512^2 x 8 = 1,358,954,496 + 268,435,456;
    # head: 4 x 4096 x 8192 + 16 x 4096 x 128256 = 134,217,728 + 8,405,385,216
    full_act = activations_by_hand(s, b, L)
    assert full_act == 80 * (1_358_954_496 + 268_435_456) + 134_217_728 + 8_405_385_216  # 138.73 GB
    # LoRA adds 4096 x (16 x 8192 + 2 x 8192 + 2 x 28672) = 4096 x 204,800 = 838,860,800 per block
    lora_act = activations_by_hand(s, b, L, lora=True)
    assert lora_act == full_act + 80 * 838_860_800  # 205.84 GB

    lora = make_plan("70B", 1000, method="lora", quantization="4bit")
    m = lora.memory
    weights = 70e9 * (4 / 8 + 4 / 64)  # 39.375 GB
    # rank 8 x (d_in + d_out) over q (8192+8192), k and v (8192+1024 each), o (8192+8192),
    # gate and up (8192+28672 each), down (28672+8192) = 8 x 161,792 per block, x 80 blocks
    adapters = 8 * ((H + H) + 2 * (H + KV * HD) + (H + H) + 2 * (H + MLP) + (MLP + H)) * L
    assert adapters == 8 * 161_792 * 80 == 103_546_880
    assert (m["batch"], m["seq_len"], m["trainable_params"]) == (8, 512, adapters)
    assert m["weights_gb"] == pytest.approx(39.375)
    assert m["adapters_gb"] == pytest.approx(adapters * 4 / 1e9)  # fp32 adapters: 0.414 GB
    assert m["gradients_gb"] == pytest.approx(adapters * 4 / 1e9)  # fp32 gradients
    assert m["optimizer_gb"] == pytest.approx(adapters * 8 / 1e9)  # AdamW m and v, fp32
    assert m["activations_gb"] == pytest.approx(lora_act / 1e9) and m["kv_cache_gb"] == 0.0
    assert m["total_gb"] == pytest.approx((weights + adapters * (4 + 4 + 8) + lora_act) / 1e9)  # 246.87 GB
    # more than the M4 Max's 128 GB, within the M3 Ultra's 512
    assert (lora.machines, lora.mode, lora.fits, lora.weights_format) == (["m3-ultra"], "separate", True, "4bit")
    assert lora.batch_size == {"m3-ultra": 8} and lora.split == {"m3-ultra": 1000}  # one machine trains one model

    full = make_plan("70B", 1000, method="full", quantization="bf16")
    f = full.memory
    # weights, gradients (bf16: 2 bytes each) and AdamW's m and v in bf16 (MLX: no fp32 master copy) = 8 bytes/param
    assert (f["weights_gb"], f["adapters_gb"], f["gradients_gb"], f["optimizer_gb"]) == pytest.approx(
        (140.0, 0.0, 140.0, 280.0)
    )
    assert f["activations_gb"] == pytest.approx(full_act / 1e9)
    assert f["total_gb"] == pytest.approx((70e9 * (2 + 2 + 4) + full_act) / 1e9)  # 698.73 GB
    # more than the M3 Ultra's 512 GB and than both machines together (640 GB): sharded, and flagged
    assert (full.machines, full.mode, full.fits, full.weights_format) == (
        ["m4-max", "m3-ultra"],
        "sharded",
        False,
        "bf16/fp16",
    )
    assert "640 GB" in full.reason and "does not fit" in full.reason


def test_70b_at_batch_1_and_1024_tokens():
    from hardware.plan import make_plan

    act, lora_act = activations_by_hand(1024, 1, L), activations_by_hand(1024, 1, L, lora=True)  # 40.1, 56.8 GB
    lora = make_plan("70B", 10, method="lora", quantization="4bit", batch_size=1, seq_len=1024)
    assert lora.memory["total_gb"] == pytest.approx((70e9 * (4 / 8 + 4 / 64) + 103_546_880 * 16 + lora_act) / 1e9)
    assert lora.machines == ["m4-max"] and lora.mode == "separate"  # 97.9 GB <= 128
    full = make_plan("70B", 10, method="full", quantization="bf16", batch_size=1, seq_len=1024)
    assert full.memory["total_gb"] == pytest.approx((70e9 * 8 + act) / 1e9)  # 600.1 GB: more than 512, within 640
    assert full.mode == "sharded" and full.fits
    # LoRA on the last 16 blocks only (mlx-lm's CLI default): 16 blocks' adapters and activations
    last16 = make_plan("70B", 10, method="lora", quantization="4bit", batch_size=1, seq_len=1024, lora=LoRASpec(8, 16))
    assert last16.memory["trainable_params"] == 8 * 161_792 * 16
    assert last16.memory["activations_gb"] == pytest.approx(activations_by_hand(1024, 1, 16, lora=True) / 1e9)
    # at batch 8 x 1024 tokens QLoRA's activations alone are 454.6 GB: the total (495.7 GB) only fits the M3 Ultra
    big = make_plan("70B", 10, method="lora", quantization="4bit", seq_len=1024)
    assert big.memory["activations_gb"] == pytest.approx(activations_by_hand(1024, 8, L, lora=True) / 1e9)
    assert big.machines == ["m3-ultra"] and big.mode == "separate"


def test_training_activation_estimate_is_a_floor_close_to_what_mlx_measures():
    """The estimate against MLX's own peak memory of one value_and_grad step of a small bf16 Llama-shaped model
    (8 blocks; full and LoRA as realign's prepare_model makes it): the measured peak above the weights, less the
    gradients, is at least the estimate and at most 1.5x it (transient backward buffers, about two blocks' worth)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from hardware.sizing import training_activation_bytes
    from realign.train.loop import LoRAConfig, TrainConfig, prepare_model

    cfg = {
        **KNOWN_SHAPES["Llama-3.1-8B"],
        "num_hidden_layers": 8,
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 2048,
        "rms_norm_eps": 1e-5,
    }
    size = with_quantization(size_from_config(cfg), "bf16")
    b, s = 2, 256  # small: bf16 matmuls are slow on CPU

    def loss(model, x):
        return nn.losses.cross_entropy(model(x[:, :-1]).astype(mx.float32), x[:, 1:]).mean()

    for lora in (None, LoRAConfig()):
        model = llama.Model(llama.ModelArgs.from_dict(cfg))
        model.set_dtype(mx.bfloat16)
        if lora:
            prepare_model(model, TrainConfig(lora=lora))
        x = mx.random.randint(0, cfg["vocab_size"], (b, s + 1), key=mx.random.key(0))
        mx.eval(model.parameters(), x)
        mx.clear_cache()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        value, grads = nn.value_and_grad(model, loss)(model, x)
        mx.eval(value, grads)
        kept = mx.get_peak_memory() - before - sum(g.nbytes for _, g in tree_flatten(grads))
        estimate = training_activation_bytes(size, b, s, 8, lora=lora is not None)
        assert estimate <= kept <= 1.5 * estimate, (lora, kept / 1e6, estimate / 1e6)


def test_full_fine_tuning_of_a_quantised_model_is_refused():
    from hardware.plan import make_plan

    with pytest.raises(ValueError, match="full fine-tuning of a 4-bit quantised model is not possible"):
        make_plan("70B", 10, method="full", quantization="4bit")
    with pytest.raises(ValueError, match="method 'qlora'"):
        make_plan("70B", 10, method="qlora")


def test_memory_without_an_architecture_counts_what_it_can():
    full = memory_estimate(ModelSize(7e9), batch=8, seq_len=512, method="full")
    assert full.total_gb == pytest.approx(7e9 * 8 / 1e9) and full.activations_gb is None
    assert "activations not estimated" in full.note
    lora = memory_estimate(ModelSize(7e9), batch=8, seq_len=512, method="lora")
    assert lora.trainable_params is None and lora.total_gb == pytest.approx(14.0)


def test_plan_cli_lora_4bit_vs_full_bf16():
    import json

    from conftest import run_cli

    def plan(*extra):
        proc = run_cli("plan", "--model", "70B", "--examples", "1000", *extra, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    lora = plan("--quantization", "4bit", "--method", "lora")
    full = plan("--quantization", "bf16", "--method", "full")
    assert lora["memory"]["weights_gb"] == pytest.approx(39.375) and full["memory"]["weights_gb"] == 140.0
    assert lora["memory"]["total_gb"] == pytest.approx(246.87, abs=0.01)  # the by-hand figures above
    assert full["memory"]["total_gb"] == pytest.approx(698.73, abs=0.01)
    assert (lora["machines"], lora["mode"]) == (["m3-ultra"], "separate")
    assert (full["machines"], full["mode"], full["fits"]) == (["m4-max", "m3-ultra"], "sharded", False)
    shown = run_cli("plan", "--model", "70B", "--examples", "1000", "--quantization", "4bit", "--method", "lora")
    assert shown.returncode == 0 and "optimizer" in shown.stdout and "activations" in shown.stdout
    bad = run_cli("plan", "--model", "70B", "--examples", "10", "--quantization", "4bit", "--method", "full")
    assert bad.returncode == 2 and "not possible" in bad.stderr
