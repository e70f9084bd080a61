"""`realign steer extract|generate|score` and `realign abliterate`: directions in the residual stream, steering at
inference, and a model with a direction projected out of its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

steer_app = typer.Typer(
    no_args_is_help=True, help="Activation steering: extract directions, generate and score with them applied."
)

_MODEL = typer.Option(..., "--model", help="Model directory (or hub id when online).")
_STEER = typer.Option(
    [],
    "--steer",
    help="VEC.safetensors:STRENGTH[@LAYER], repeatable (vectors compose; same layer: they add). Without @LAYER the "
    "file's chosen layer.",
)


def _layers(layer: int | None, layers: str | None) -> tuple[int | None, list[int] | None]:
    from realign.cli.main import _fail

    measured = None
    if layers:
        try:
            measured = sorted({int(x) for x in layers.split(",") if x.strip()})
        except ValueError:
            _fail(f"--layers {layers!r}: expected comma-separated block numbers, e.g. 0,1,2")
    if layer is not None and measured is not None and layer not in measured:
        measured.append(layer)
    return layer, measured


def _load(model: str):
    from realign.cli.main import _fail
    from realign.model.load import ModelLoadError, load_model

    try:
        return load_model(model)
    except ModelLoadError as exc:
        _fail(str(exc))


def _directions(lm, positive: Path, negative: Path, layer, layers, heldout_fraction: float, seed: int, projected: bool):
    from realign.cli.main import _fail, _read_prompts
    from realign.steer.directions import directions_from_prompts

    pos, neg = _read_prompts(positive), _read_prompts(negative)
    try:
        found = directions_from_prompts(
            lm.model,
            lm.tokenizer,
            pos,
            neg,
            layers=layers,
            layer=layer,
            heldout_fraction=heldout_fraction,
            seed=seed,
            projected=projected,
        )
    except ValueError as exc:
        _fail(str(exc))
    found.source.update({"positive_file": str(positive), "negative_file": str(negative), "model": str(lm.path)})
    return found


def _print_separation(found) -> None:
    from rich.table import Table

    from realign.cli.main import out

    table = Table(title="separation of held-out prompts per layer (d' and threshold accuracy)")
    for c in ("layer", "d'", "held-out accuracy", "|mean difference|", ""):
        table.add_column(c)
    for layer, s in sorted(found.separation.items()):
        mark = "chosen" if layer == found.chosen_layer else ""
        table.add_row(str(layer), f"{s['d_prime']:.3g}", f"{s['accuracy']:.3f}", f"{s['norm']:.4g}", mark)
    out.print(table)


@steer_app.command("extract")
def extract_cmd(
    model: str = _MODEL,
    positive: Path = typer.Option(..., "--positive", help="Prompts showing the behaviour (JSONL 'prompt' or text)."),
    negative: Path = typer.Option(..., "--negative", help="Prompts without it (same format)."),
    out_path: Path = typer.Option(..., "--out", help="Write the directions here (.safetensors)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Use this block (0-based); default: best separation."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Blocks to measure, e.g. 0,1,2 (default: all)."),
    heldout_fraction: float = typer.Option(0.25, "--heldout-fraction", help="Share of each set held out (0.05-0.5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
    projected: bool = typer.Option(
        False, "--projected/--plain", help="Take the negative prompts' mean activation out of the direction."
    ),
) -> None:
    """Mean residual-stream difference (positive - negative) at the last prompt token, per layer; the layer with the
    best separation of held-out prompts is chosen unless --layer names one. Prints the separation per layer."""
    from realign.cli.main import _fail, out
    from realign.steer.directions import save_directions

    if not 0.05 <= heldout_fraction <= 0.5:
        _fail(f"--heldout-fraction {heldout_fraction}: expected 0.05 to 0.5")
    if out_path.suffix != ".safetensors":
        _fail(f"--out {out_path}: directions are written as safetensors; name the file with .safetensors")
    lm = _load(model)
    found = _directions(lm, positive, negative, *_layers(layer, layers), heldout_fraction, seed, projected)
    _print_separation(found)
    save_directions(found, out_path)
    out.print(f"wrote {out_path} (layers {sorted(found.directions)}, chosen {found.chosen_layer})")


def _steering(specs: list[str]):
    from realign.cli.main import _fail
    from realign.steer.steering import load_steering

    try:
        return load_steering(specs)
    except ValueError as exc:
        _fail(str(exc))


@steer_app.command("generate")
def generate_cmd(
    model: str = _MODEL,
    prompts: Path = typer.Option(..., "--prompts", help="JSONL with a 'prompt' per line, or text, one per line."),
    out_path: Path = typer.Option(..., "--out", help="Write completions here (JSONL: prompt, steer, response)."),
    steer: list[str] = _STEER,
    max_tokens: int = typer.Option(64, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(32, "--batch-size"),
) -> None:
    """Generate with steering vectors added to the residual stream (none given: the unsteered model)."""
    from realign.cli.main import _fail, _read_prompts, out
    from realign.data.datasets import write_jsonl
    from realign.model.generate import GenerationConfig, generate
    from realign.steer.steering import steered

    try:
        cfg = GenerationConfig(temperature=temperature, max_tokens=max_tokens, seed=seed, batch_size=batch_size)
    except ValueError as exc:
        _fail(str(exc))
    texts = _read_prompts(prompts)
    vectors = _steering(steer)
    lm = _load(model)
    try:
        with steered(lm.model, vectors):
            results = generate(lm.model, lm.tokenizer, texts, cfg)
    except ValueError as exc:
        _fail(str(exc))
    write_jsonl(out_path, [{"prompt": p, "steer": steer, "response": r[0].text} for p, r in zip(texts, results)])
    out.print(f"wrote {len(texts)} completions to {out_path}" + (f" steered by {', '.join(steer)}" if steer else ""))


@steer_app.command("score")
def score_cmd(
    model: str = _MODEL,
    data: Path = typer.Option(..., "--data", help="JSONL with 'prompt' and 'answer' (the completion to score)."),
    steer: list[str] = _STEER,
    out_path: Optional[Path] = typer.Option(None, "--out", help="Also write per-row losses here (JSONL)."),
) -> None:
    """Mean token cross-entropy (nats) of each answer given its prompt, with and without the steering vectors."""
    from realign.cli.main import _fail, out
    from realign.data.datasets import read_prompt_answers, write_jsonl
    from realign.data.formats import DataFormatError
    from realign.model.logprobs import mean_completion_loss
    from realign.steer.steering import steered

    try:
        prompts, answers = read_prompt_answers(str(data))
    except (DataFormatError, OSError) as exc:
        _fail(str(exc))
    vectors = _steering(steer)
    lm = _load(model)
    base = mean_completion_loss(lm.model, lm.tokenizer, prompts, answers)
    try:
        with steered(lm.model, vectors):
            moved = mean_completion_loss(lm.model, lm.tokenizer, prompts, answers)
    except ValueError as exc:
        _fail(str(exc))
    out.print(
        f"{len(prompts)} answers: mean loss {base.mean():.4f} nats unsteered, {moved.mean():.4f} steered "
        f"({', '.join(steer) or 'no vectors'})"
    )
    if out_path is not None:
        rows = [
            {"prompt": p, "answer": a, "loss": float(b), "steered_loss": float(m)}
            for p, a, b, m in zip(prompts, answers, base, moved)
        ]
        write_jsonl(out_path, rows)
        out.print(f"wrote {out_path}")


def abliterate_cmd(
    model: str = _MODEL,
    harmful: Path = typer.Option(..., "--harmful", help="Prompts showing the behaviour to remove (JSONL or text)."),
    harmless: Path = typer.Option(..., "--harmless", help="Prompts without it (same format)."),
    out_dir: Path = typer.Option(..., "--out", help="A new model directory (mlx_lm.load reads it)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Direction from this block; default: best separation."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Blocks to measure, e.g. 0,1 (default: all)."),
    embeddings: bool = typer.Option(
        False, "--embeddings/--no-embeddings", help="Also orthogonalise the token embeddings (tied: the output head)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    projected: bool = typer.Option(
        True, "--projected/--plain", help="Take the harmless prompts' mean activation out of the direction."
    ),
) -> None:
    """Project the harmful - harmless direction out of every weight that writes to the residual stream (each block's
    attention output and MLP down projection; with --embeddings the token embeddings too) and save the model.
    Prints the separation per layer."""
    from realign.cli.main import _fail, out
    from realign.steer.abliterate import abliterate, save_abliterated
    from realign.steer.directions import save_directions

    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        _fail(f"{out_dir}: exists and is not empty; choose another --out or pass --force")
    lm = _load(model)
    found = _directions(lm, harmful, harmless, *_layers(layer, layers), 0.25, 0, projected)
    _print_separation(found)
    try:
        report = abliterate(lm.model, found.direction, embeddings=embeddings, layer=found.chosen_layer)
    except ValueError as exc:
        _fail(str(exc))
    save_abliterated(lm.model, lm.path, out_dir, report)
    save_directions(found, out_dir / "direction.safetensors")
    out.print(
        f"orthogonalised {len(report.matrices)} matrices against layer {found.chosen_layer}'s direction: largest "
        f"projection {report.max_projection_before:.4g} -> {report.max_projection_after:.3g}"
    )
    out.print(f"wrote {out_dir} (mlx_lm.load reads it; the direction is in {out_dir / 'direction.safetensors'})")
