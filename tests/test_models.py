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


def test_lora_on_a_4bit_model_saves_adapters_and_fuses_exactly(tiny_model_dir, tmp_path):
    """QLoRA as mlx-lm does it: adapters train on quantised weights; a stage writes the adapters only; loading fuses
    them into dequantised copies of the adapted layers, exactly (re-quantising would round away trained-size
    adapters: the rounding is measured here against their effect); the other layers stay 4-bit."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import quantize_model, save_config
    from mlx_lm.utils import save_model as mlx_save_model

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
    lm = load_model(q4)
    tokens = mx.array([[5, 6, 7, 8, 9]])
    base_logits = lm.model(tokens)
    prepare_model(lm.model, TrainConfig(lora=LoRAConfig(rank=4, dropout=0.1)))
    trained = [(k, mx.random.normal(v.shape) * 0.002) for k, v in tree_flatten(lm.model.trainable_parameters())]
    lm.model.update(tree_unflatten(trained))  # stands in for training: adapters that change the output
    lm.model.eval()  # no adapter dropout in the logits compared
    expected = lm.model(tokens)
    stage = save_model(lm.model, q4, tmp_path / "run" / "01_sft_preparation" / "model")
    assert sorted(p.name for p in stage.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    assert json.loads((stage / "adapter_config.json").read_text())["lora_parameters"]["dropout"] == pytest.approx(0.1)
    chained = load_model(stage)
    change = mx.abs(expected - base_logits).max().item()
    assert mx.abs(chained.model(tokens) - expected).max().item() < change / 100  # exact, up to float rounding
    requantised = load_model(q4)
    prepare_model(requantised.model, TrainConfig(lora=LoRAConfig(rank=4)))
    requantised.model.update(tree_unflatten(trained))
    fuse = [(n, m.fuse()) for n, m in requantised.model.named_modules() if type(m).__name__ == "LoRALinear"]
    requantised.model.update_modules(tree_unflatten(fuse))  # mlx-lm's default fuse: back onto the 4-bit grid
    assert mx.abs(requantised.model(tokens) - expected).max().item() > change  # why realign fuses dequantised
    final = save_model(chained.model, stage, tmp_path / "run" / "07_evaluation" / "final_model")
    fused, _ = mlx_lm.load(str(final))
    assert mx.abs(fused(tokens) - expected).max().item() < change / 100
    weights = mx.load(str(final / "model.safetensors"))
    assert "model.embed_tokens.scales" in weights and "model.layers.0.self_attn.q_proj.scales" not in weights
