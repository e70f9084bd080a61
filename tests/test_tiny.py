"""The tiny-model kit: a Qwen2 model + offline BPE tokenizer that mlx-lm loads like a real model."""

import json
import subprocess
import sys

import mlx.core as mx
import mlx_lm
import pytest

from conftest import run_cli
from realign.model.tiny import IM_END, TinyModelConfig, build_tiny_model, train_tokenizer


def test_model_dir_is_a_qwen2_checkpoint(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (
        "qwen2",
        128,
        2,
        2048,
    )
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    model, tok = mlx_lm.load(str(tiny_model_dir))
    logits = model(mx.array([tok.encode("What is 2 + 2?")]))
    assert logits.shape[0] == 1 and logits.shape[2] == 2048
    assert bool(mx.all(mx.isfinite(logits)))


def test_tokenizer_digits_are_single_tokens_and_vocab_is_full(tiny_model_dir):
    _, tok = mlx_lm.load(str(tiny_model_dir))
    ids = tok.encode("year 2024")
    assert [tok.decode([i]) for i in ids[-4:]] == ["2", "0", "2", "4"]
    assert len(tok.get_vocab()) == 2048
    assert tok.decode(tok.encode("Héllo wörld ✓ 12")) == "Héllo wörld ✓ 12"  # byte-level: lossless on any text


def test_chat_template_is_chatml(tiny_model_dir):
    _, tok = mlx_lm.load(str(tiny_model_dir))
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token_ids == {tok.convert_tokens_to_ids(IM_END)}
    assert len(tok.encode("<|im_start|>")) == 1  # special tokens are atomic


def test_same_seed_same_model_and_generation(tmp_path):
    a = build_tiny_model(tmp_path / "a", TinyModelConfig(seed=3))
    b = build_tiny_model(tmp_path / "b", TinyModelConfig(seed=3))
    c = build_tiny_model(tmp_path / "c", TinyModelConfig(seed=4))
    wa, wb, wc = (mx.load(str(p / "model.safetensors")) for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(mx.array_equal(wa[k], wb[k]) for k in wa)
    assert not mx.array_equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    outs = []
    for p in (a, b):
        m, t = mlx_lm.load(str(p))
        outs.append(mlx_lm.generate(m, t, "What is 12 + 30?", max_tokens=8))
    assert outs[0] == outs[1] and outs[0] != ""


def test_tokenizer_training_is_deterministic():
    assert train_tokenizer(600).to_str() == train_tokenizer(600).to_str()


def test_refuses_to_overwrite_and_rejects_bad_shapes(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*--force"):
        build_tiny_model(tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="hidden=100 is not divisible by heads=3"):
        build_tiny_model(tmp_path / "n", TinyModelConfig(hidden=100))
    assert not (tmp_path / "n").exists()


def test_cli_then_plain_mlx_lm_as_in_the_readme(tmp_path):
    proc = run_cli(
        "model", "tiny", "tiny-model", "--hidden", "64", "--layers", "1", "--vocab", "1024", "--seed", "7", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "qwen2, hidden=64, layers=1, vocab=1024, seed=7" in proc.stdout
    code = "import mlx_lm; m,t=mlx_lm.load('tiny-model'); print(repr(mlx_lm.generate(m,t,'hi',max_tokens=5)))"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        for _ in range(2)
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip() not in ("", "''")
    proc = run_cli("model", "tiny", "tiny-model", cwd=tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr
