"""Model size, memory estimate (hand-computed) and machine selection for 7B ... 405B."""

import pytest

from hardware.selection import select_machine
from hardware.sizing import ModelSize, memory_estimate, parse_size, size_from_config


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
    assert p.memory["kv_cache_gb"] is None  # a request names no architecture


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
