"""realign.model.load.load_model: local directories, hub ids offline, clear errors."""

import json
import re
import shutil

import pytest

from conftest import run_cli
from realign.model.load import ModelLoadError, load_model


def test_loads_a_local_directory(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    assert lm.path == tiny_model_dir and lm.config["model_type"] == "qwen2"
    assert lm.tokenizer.encode("7") != []


def test_hub_id_offline_names_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty cache: nothing to find locally
    with pytest.raises(ModelLoadError) as info:
        load_model("Qwen/Qwen2.5-7B-Instruct")
    msg = str(info.value)
    assert "'Qwen/Qwen2.5-7B-Instruct' is not a local directory" in msg
    assert "pass the local directory" in msg and "realign model tiny ./tiny-model" in msg


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(str(tmp_path / "nope" / "model"))


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"no \*.safetensors weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_model(tmp_path)


def test_corrupt_weights_are_named(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=rf"^{re.escape(str(broken / 'model.safetensors'))}: cannot be read"):
        load_model(broken)


def test_a_loader_message_in_brackets_reaches_the_user_intact(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Reverse: 123\n")
    done = run_cli("generate", "--model", str(broken), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2 and "[load_safetensors]" in done.stderr  # not swallowed as rich markup
    assert f"{broken / 'model.safetensors'}: cannot be read" in done.stderr


def test_lora_on_a_4bit_model_keeps_it_4bit_and_exact_through_a_chain_of_stages(tiny_model_dir, tmp_path):
    """QLoRA as mlx-lm does it: adapters train on quantised weights; each stage writes its adapters only. Loading keeps
    the quantised weights and adds every stage's update beside them (exact, rank-sized), where fusing would re-quantise
    and round away trained-size adapters (measured here); a second stage trains on top; the saved model is exact."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import quantize_model, save_config
    from mlx_lm.utils import save_model as mlx_save_model

    from realign.model.chain import ChainedQuantizedLinear
    from realign.model.load import save_model
    from realign.train.loop import LoRAConfig, TrainConfig, prepare_model

    model, _, config = mlx_lm.load(str(tiny_model_dir), return_config=True)
    model, config = quantize_model(model, config, group_size=64, bits=4)
    q4 = tmp_path / "q4"
    mlx_save_model(q4, model)
    save_config(config, q4 / "config.json")
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special")):
            shutil.copy(f, q4)
    tokens = mx.array([[5, 6, 7, 8, 9]])

    def nbytes(m):
        return sum(v.nbytes for _, v in tree_flatten(m.parameters()))

    def train_stage(start, out, seed):
        lm = load_model(start)
        before = lm.model(tokens)
        prepare_model(lm.model, TrainConfig(lora=LoRAConfig(rank=4, dropout=0.1), seed=seed))
        trained = [(k, mx.random.normal(v.shape) * 0.002) for k, v in tree_flatten(lm.model.trainable_parameters())]
        lm.model.update(tree_unflatten(trained))  # stands in for training: adapters that change the output a little
        lm.model.eval()  # no adapter dropout in the logits compared
        expected = lm.model(tokens)
        return save_model(lm.model, start, out), expected, mx.abs(expected - before).max().item(), lm

    stage1, expected1, change1, trained1 = train_stage(q4, tmp_path / "run" / "01_sft_preparation" / "model", 1)
    assert sorted(p.name for p in stage1.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    assert json.loads((stage1 / "adapter_config.json").read_text())["lora_parameters"]["dropout"] == pytest.approx(0.1)
    chained = load_model(stage1)
    assert mx.abs(chained.model(tokens) - expected1).max().item() < change1 / 100  # exact up to float rounding
    layers = [m for _, m in chained.model.named_modules() if isinstance(m, ChainedQuantizedLinear)]
    assert len(layers) == 14 and nbytes(chained.model) < 1.5 * nbytes(load_model(q4).model)  # still 4-bit
    # mlx-lm's default fuse re-quantises: the rounding outweighs the adapters' effect
    from mlx_lm.tuner.lora import LoRALinear

    fused = [(n, m.fuse()) for n, m in trained1.model.named_modules() if isinstance(m, LoRALinear)]
    trained1.model.update_modules(tree_unflatten(fused))
    assert mx.abs(trained1.model(tokens) - expected1).max().item() > change1

    stage5, expected5, change5, _ = train_stage(stage1, tmp_path / "run" / "05_dpo_optimization" / "model", 5)
    assert mx.abs(load_model(stage5).model(tokens) - expected5).max().item() < change5 / 100
    final = save_model(load_model(stage5).model, stage5, tmp_path / "run" / "07_evaluation" / "final_model")
    loaded, _ = mlx_lm.load(str(final))
    assert mx.abs(loaded(tokens) - expected5).max().item() < change5 / 100
    weights = mx.load(str(final / "model.safetensors"))
    assert "model.embed_tokens.scales" in weights and "model.layers.0.self_attn.q_proj.scales" not in weights
    # or, unfused, one adapter on the 4-bit model (QLoRA as mlx-lm loads it)
    from realign.model.adapters import merge_adapter_chain

    adapters = merge_adapter_chain(stage5, tmp_path / "run" / "07_evaluation" / "adapters")
    qlora, _ = mlx_lm.load(str(q4), adapter_path=str(adapters))
    assert mx.abs(qlora(tokens) - expected5).max().item() < change5 / 100


def test_a_chain_of_lora_stages_merges_into_one_adapter_mlx_lm_loads_exactly(tiny_model_dir, tmp_path):
    """Stages with different ranks, scales and blocks (stage 1: rank 4 on the last block; stage 5: rank 2 on both)
    merge into one adapter of stacked rank; mlx-lm loads it on the root model and gets the chain's logits."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten, tree_unflatten

    from realign.model.adapters import merge_adapter_chain
    from realign.model.load import save_model
    from realign.train.loop import LoRAConfig, TrainConfig, prepare_model

    tokens = mx.array([[5, 6, 7, 8, 9, 10]])

    def train_stage(start, out, lora, seed):
        lm = load_model(start)
        prepare_model(lm.model, TrainConfig(lora=lora, seed=seed))
        trained = [(k, mx.random.normal(v.shape) * 0.01) for k, v in tree_flatten(lm.model.trainable_parameters())]
        lm.model.update(tree_unflatten(trained))
        lm.model.eval()
        return save_model(lm.model, start, out), lm.model(tokens)

    run = tmp_path / "run"
    s1, _ = train_stage(tiny_model_dir, run / "01_sft_preparation" / "model", LoRAConfig(rank=4, layers=1), 1)
    s5, expected = train_stage(s1, run / "05_dpo_optimization" / "model", LoRAConfig(rank=2, scale=7.0), 5)
    merged = merge_adapter_chain(s5, run / "07_evaluation" / "final_model")
    config = json.loads((merged / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 6 and config["lora_parameters"]["scale"] == 1.0
    assert config["num_layers"] == 2 and config["model"] == str(tiny_model_dir.resolve())  # the tiny model's 2 blocks
    weights = mx.load(str(merged / "adapters.safetensors"))
    # a block only stage 5 adapted: its rank-2 update padded with zeros to rank 6
    first = "model.layers.0.self_attn.q_proj"
    assert weights[f"{first}.lora_a"].shape[1] == 6 and mx.all(weights[f"{first}.lora_b"][2:] == 0).item()
    model, _ = mlx_lm.load(str(tiny_model_dir), adapter_path=str(merged))
    change = mx.abs(expected - load_model(tiny_model_dir).model(tokens)).max().item()
    assert mx.abs(model(tokens) - expected).max().item() < change / 100  # the chain's logits, up to float rounding
    with pytest.raises(Exception, match="not an adapter directory"):
        merge_adapter_chain(tiny_model_dir, tmp_path / "x")
