"""`realign steer extract|generate|score` and `realign abliterate`, run as a user would, on the tiny model."""

from __future__ import annotations

import json

from conftest import run_cli


def _prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_extract_steer_score_and_abliterate(tiny_model_dir, tmp_path):
    import mlx_lm

    from realign.steer.abliterate import relative_projection
    from realign.steer.directions import load_directions

    digits = [str(1000 + 37 * i) for i in range(12)]
    pos = _prompts(tmp_path / "pos.jsonl", [f"Bad. Copy: {d}" for d in digits])
    neg = _prompts(tmp_path / "neg.jsonl", [f"Blue. Copy: {d}" for d in digits])
    vec = tmp_path / "v.safetensors"
    r = run_cli(
        "steer",
        "extract",
        "--model",
        str(tiny_model_dir),
        "--positive",
        str(pos),
        "--negative",
        str(neg),
        "--out",
        str(vec),
    )
    assert r.returncode == 0, r.stderr
    found = load_directions(vec)
    assert sorted(found.directions) == [0, 1] and f"chosen {found.chosen_layer}" in r.stdout
    assert "held-out accuracy" in r.stdout and found.source["heldout_positive"] == 3  # a quarter of 12 held out

    out = tmp_path / "gen.jsonl"
    r = run_cli(
        "steer",
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(pos),
        "--out",
        str(out),
        "--steer",
        f"{vec}:4@1",
        "--steer",
        f"{vec}:-2",
        "--max-tokens",
        "4",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["steer"] == [f"{vec}:4@1", f"{vec}:-2"]

    # the main `realign generate` steers too: strength 0 is the unsteered model, a strong vector changes the greedy text
    texts = {}
    for name, extra in (("none", []), ("zero", ["--steer", f"{vec}:0@1"]), ("strong", ["--steer", f"{vec}:40@1"])):
        gen = tmp_path / f"main-{name}.jsonl"
        args = ["--model", str(tiny_model_dir), "--prompts", str(pos), "--out", str(gen), "--temperature", "0"]
        r = run_cli("generate", *args, "--max-tokens", "6", *extra)
        assert r.returncode == 0, r.stderr
        assert ("steered by" in r.stdout) == bool(extra)
        texts[name] = [json.loads(line)["responses"][0]["text"] for line in gen.read_text().splitlines()]
    assert texts["zero"] == texts["none"] and texts["strong"] != texts["none"]
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompts", str(pos), "--out", str(gen), "--steer", "x:1")
    assert r.returncode == 2 and "no such file" in r.stderr

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Copy: {d}", "answer": d}) + "\n" for d in digits[:4]))
    losses = tmp_path / "losses.jsonl"
    for strength, same in (("0", True), ("6", False)):
        r = run_cli(
            "steer",
            "score",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--steer",
            f"{vec}:{strength}@0",
            "--out",
            str(losses),
        )
        assert r.returncode == 0, r.stderr
        scored = [json.loads(line) for line in losses.read_text().splitlines()]
        assert len(scored) == 4 and all(row["loss"] > 0 for row in scored)
        # strength 0: exactly the unsteered losses; a real vector moves them
        assert all((row["loss"] == row["steered_loss"]) == same for row in scored), strength

    r = run_cli(
        "steer",
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(pos),
        "--out",
        str(out),
        "--steer",
        f"{vec}:4@9",
    )
    assert r.returncode == 2 and "not 9" in r.stderr
    r = run_cli(
        "steer",
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(pos),
        "--out",
        str(out),
        "--steer",
        "v.safetensors@1",
    )
    assert r.returncode == 2 and "expected VEC.safetensors:STRENGTH" in r.stderr

    model_dir = tmp_path / "abliterated"
    r = run_cli(
        "abliterate",
        "--model",
        str(tiny_model_dir),
        "--harmful",
        str(pos),
        "--harmless",
        str(neg),
        "--out",
        str(model_dir),
        "--layer",
        "0",
        "--embeddings",
    )
    assert r.returncode == 0, r.stderr
    assert "orthogonalised 5 matrices" in r.stdout  # the embeddings and both blocks' two writers
    model, _ = mlx_lm.load(str(model_dir))
    direction = load_directions(model_dir / "direction.safetensors")
    assert direction.chosen_layer == 0
    assert relative_projection(model, direction.direction) < 1e-6
    r = run_cli(
        "abliterate",
        "--model",
        str(tiny_model_dir),
        "--harmful",
        str(pos),
        "--harmless",
        str(neg),
        "--out",
        str(model_dir),
    )
    assert r.returncode == 2 and "not empty" in r.stderr
