"""The `realign` command line."""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import realign  # noqa: F401  (preloads the fast BLAS before anything imports mlx)
from realign.cli.curate import curate_cmd
from realign.cli.export import export_cmd
from realign.cli.steer import abliterate_cmd, steer_app
from realign.cli.temporary_server import TemporaryServer, TemporaryServerError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="realign: gated LLM realignment on Apple MLX.")
app.command("export")(export_cmd)  # the command lives in its own module
app.add_typer(steer_app, name="steer")  # realign/cli/steer.py: extract, generate, score
app.command("abliterate")(abliterate_cmd)
app.command("curate")(curate_cmd)
model_app = typer.Typer(no_args_is_help=True, help="Build and inspect models.")
app.add_typer(model_app, name="model")
# The gate commands call the `gates` package (GX) lazily: the core library itself never imports it.
gate_app = typer.Typer(no_args_is_help=True, help="Quality gates: run a suite on a file, build Data Docs.")
app.add_typer(gate_app, name="gate")
app.add_typer(gate_app, name="gates", help="Alias of `gate`.")

# The checkout this CLI runs from: recipes (deployments/) and prefect.yaml live there.
REPO = Path(__file__).resolve().parents[2]
# markup off: what we print holds user text (paths, messages, file contents) that must never be read as rich markup;
# the few styled lines pass markup=True and escape what they interpolate.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _fail(message: str, code: int = 2) -> None:
    # The message holds user text (paths, file contents): never read it as rich markup.
    err.print("[bold red]error:[/] " + escape(message), markup=True)
    raise typer.Exit(code)


def _threads_line(report) -> str:
    """Threads now, and what `realign calibrate` measured: runs use its choice for a model like the one swept."""
    if report.blas_threads is None:
        return "not set (no fast BLAS)"
    now = f"{report.blas_threads} now"
    cal = report.blas_threads_calibrated
    if not cal:
        return f"{now} (one per core by default; `realign calibrate` measures the best count)"
    points = ", ".join(
        f"{n}: {v:.2f} steps/s, {cal['cpu_s_per_step'][n]:.2f} CPU s/step" for n, v in cal["steps_per_s"].items()
    )
    return f"{now}; calibrated choice {cal['chosen']} (fewest within {cal['tolerance']:.0%} of the fastest; {points})"


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Print the platform, MLX device, whether the fast BLAS is active, and a measured matmul GFLOPS figure."""
    from realign.cli.doctor import run_doctor

    report = run_doctor()
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    table = Table(title="realign doctor", show_header=False)
    table.add_row("platform", report.platform)
    table.add_row("python", report.python)
    table.add_row(
        "cpus / memory",
        f"{report.cpu_count} / {report.memory_gb:.1f} GB" if report.memory_gb else str(report.cpu_count),
    )
    table.add_row("mlx / mlx-lm", f"{report.mlx_version} / {report.mlx_lm_version}")
    table.add_row("MLX device", report.device)
    table.add_row("fast BLAS", ("active: " if report.fast_blas_active else "inactive: ") + report.fast_blas)
    table.add_row(
        "matmul",
        f"{report.gflops:.1f} GFLOPS (float32 {report.matmul_size}x{report.matmul_size}, "
        f"{report.matmul_seconds * 1e3:.1f} ms each)",
    )
    table.add_row("BLAS threads", _threads_line(report))
    for k, v in report.environment.items():
        table.add_row(k, v)
    out.print(table)


@app.command()
def validate(
    file: Path = typer.Argument(..., help="JSONL or Parquet file to check."),
    fmt: str = typer.Option(..., "--format", "-f", help="sft | dpo | grpo | rlvr | grounded (orpo and cpo are dpo)."),
    rejects: Optional[Path] = typer.Option(
        None, "--rejects", help="Write bad rows here (JSONL with line number and reason)."
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="Write the good rows here (.jsonl keeps lines verbatim, or .parquet)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary line."),
    abstention: str = typer.Option(
        "I don't know", "--abstention", help="grounded: the answer that abstains (the recipe's data.abstention)."
    ),
) -> None:
    """Check a data file line by line; exit 0 when clean, 1 when any row was rejected, 2 when the file itself
    cannot be validated (missing, a directory, empty, compressed, unreadable, unsafe output paths, disk full).

    Every bad line is reported as FILE:LINE: what is wrong (expected what).
    With --out and no --rejects, rejects go to OUT's name + .rejects.jsonl so no row is lost.
    """
    from realign.data.formats import FileProblem, canonical_format, validate_file
    from realign.data.grounded import abstention_text

    try:
        fmt = canonical_format(fmt)
    except ValueError as exc:
        _fail(str(exc))
    if out_path is not None and (out_path.name in ("", ".", "..") or out_path.is_dir()):
        _fail(f"{out_path}: is a directory; --out names the file to write, e.g. {out_path / 'clean.jsonl'}")
    if out_path is not None and rejects is None:
        rejects = out_path.with_name(out_path.name.split(".")[0] + ".rejects.jsonl")
        if os.path.lexists(rejects):
            _fail(f"{rejects}: exists, and rejects would go there by default; pass --rejects PATH (or move it)")

    def show(msg: str) -> None:
        if not quiet:
            out.print(msg, markup=False)

    def stamp(p: Path | None):
        return p.stat().st_mtime_ns if p is not None and p.is_file() else None

    before = {p: stamp(p) for p in (rejects, out_path) if p is not None}
    status = err.status(f"validating {file}") if err.is_terminal else None
    if status:
        status.start()
    try:
        with abstention_text(abstention):
            report = validate_file(
                file,
                fmt,
                out=out_path,
                rejects=rejects,
                on_problem=show,
                on_progress=(lambda n: status.update(f"validating {file}: {n:,} lines")) if status else None,
            )
    except FileProblem as exc:
        _fail(str(exc))
    except OSError as exc:  # disk full, permissions, a vanished folder
        targets = " and ".join(str(p) for p in (rejects, out_path) if p is not None) or str(file)
        kept = [str(p) for p, was in before.items() if stamp(p) != was]
        saved = f"only {', '.join(kept)} was saved" if kept else "nothing was written"
        _fail(
            f"writing {targets}: {exc.strerror or exc}; {saved}, the input is untouched "
            f"(free space, or choose another --out/--rejects)"
        )
    finally:
        if status:
            status.stop()
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(report.kinds.items()))
    out.print(report.summary() + (f" ({kinds})" if kinds else ""), markup=False)
    raise typer.Exit(1 if report.rejected else 0)


@gate_app.command("check")
def gate_check(
    file: Path = typer.Argument(
        ..., help="A file a run wrote (JSONL, Parquet, a JSON of metrics, or a gate_<stage>.json to show), or your own."
    ),
    suite: Optional[str] = typer.Option(
        None, "--suite", help="Suite name, e.g. preference_pairs, evaluation (default: the one the file's columns fit)."
    ),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="YAML/JSON of ThresholdsConfig overrides."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Stage name for the report (default: the suite)."),
    benchmarks: Optional[list[str]] = typer.Option(
        None, "--benchmark", help="sft_baseline: benchmark columns to check."
    ),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write gate_<stage>.json here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Run one suite on a file (or show a gate_<stage>.json); exit 0 for HIGH, 0 with a warning for MEDIUM, 2 for
    REJECT. A file the suite cannot check is named with what it lacks and the file beside it to check instead."""
    from gates.cli import GateInputError, check_file, is_gate_report, load_thresholds, print_report, run_thresholds

    try:
        th = load_thresholds(thresholds)
        from_run = None if thresholds or is_gate_report(file) else run_thresholds(file)
        if from_run:  # a run's own file is checked against the thresholds its gates used
            th = from_run[0]
            err.print(f"thresholds: the run's ({from_run[1]})")
        report = check_file(suite, file, th, stage, benchmarks)
    except GateInputError as exc:
        _fail(str(exc))
    if out_dir is not None:
        report.write_json(out_dir / f"gate_{report.stage}.json")
    if as_json:
        out.print_json(report.model_dump_json(exclude={"gx_results"}))
    else:
        print_report(report, out)
    if report.tier == "MEDIUM":
        err.print("[yellow]warning:[/] " + escape(report.failure_message()), markup=True)
    raise typer.Exit(2 if report.tier == "REJECT" else 0)


@gate_app.command("docs")
def gate_docs(
    run_dir: Path = typer.Argument(..., help="A run directory holding gate_<stage>.json files."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the site (default RUN_DIR/gate_docs)."),
) -> None:
    """Build Great Expectations Data Docs (static HTML) for a run's gate results."""
    from gates.docs import build_data_docs

    try:
        index = build_data_docs(run_dir, out_dir)
    except FileNotFoundError as exc:
        _fail(str(exc))
    out.print(f"Data Docs: {index}")


@app.command("verify")
def verify_cmd(
    file: Path = typer.Argument(..., help="RLVR (problem, solution, responses[, tests]) or GRPO JSONL to grade."),
    verifier: str = typer.Option(
        "auto", "--verifier", help="auto | exact | numeric | math | regex | python (auto: python with tests, ...)."
    ),
    out_path: Path = typer.Option(..., "--out", help="Write the graded rows here (JSONL, input order)."),
    wall_seconds: float = typer.Option(10.0, "--timeout", help="python: wall-clock seconds per response."),
    memory_mb: int = typer.Option(1024, "--memory-mb", help="python: address-space limit per response (MiB)."),
    weak_sandbox: bool = typer.Option(
        False, "--allow-weak-sandbox", help="python: run code even without bubblewrap (side effects only limited)."
    ),
) -> None:
    """Grade every response with a verifier; write each response's `correct` (or GRPO `score`) and a `verifier`
    object (status passed / failed / timeout / memory / error, seconds); print false positives and negatives against
    the labels the file already had. Exit 0 when it ran, 2 when the file or options are unusable."""
    from realign.data.formats import DataFormatError, FileProblem, check_output_paths
    from realign.score.grading import grade_file
    from realign.score.sandbox import SandboxLimits, isolation
    from realign.score.verify import KINDS

    if verifier not in KINDS:
        _fail(f"--verifier {verifier!r}: expected one of {', '.join(KINDS)}")
    if out_path.suffix.lower() != ".jsonl":
        _fail(f"--out {out_path}: graded rows are written as JSONL; name the file with .jsonl")
    try:
        limits = SandboxLimits(
            wall_seconds=wall_seconds,
            cpu_seconds=max(1, int(wall_seconds)),
            memory_mb=memory_mb,
            allow_weak_isolation=weak_sandbox,
        )
        check_output_paths([file], [out_path])
    except (ValueError, FileProblem) as exc:
        _fail(str(exc))
    status = err.status(f"verifying {file}") if err.is_terminal else None
    if status:
        status.start()
    try:
        report = grade_file(
            file,
            out_path,
            verifier,
            limits,
            on_progress=(lambda done, total: status.update(f"verifying {file}: {done}/{total}")) if status else None,
        )
    except (FileProblem, DataFormatError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"writing {out_path}: {exc.strerror or exc}; nothing was written (choose another --out)")
    finally:
        if status:
            status.stop()
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
    out.print(f"graded {report.responses} responses of {report.rows} rows in {report.seconds:.1f} s: {statuses}")
    if report.code_responses:
        level = isolation()
        out.print(f"{report.code_responses} code responses ran in a sandbox: {level}")
        if level in ("unshare", "rlimits"):
            err.print("warning: no operating-system sandbox here (bubblewrap not installed): side effects only limited")
    labelled_wrong = report.false_positive + report.true_negative
    labelled_right = report.false_negative + report.true_positive
    out.print(
        f"against the input's labels: false positives {report.false_positive} of {labelled_wrong} labelled wrong"
        + (f" ({report.false_positive_rate:.1%})" if labelled_wrong else "")
        + f", false negatives {report.false_negative} of {labelled_right} labelled right"
        + (f" ({report.false_negative_rate:.1%})" if labelled_right else "")
    )
    for line, why in report.ungradable_rows[:10]:
        err.print(f"{file}:{line}: not graded: {why}")
    if len(report.ungradable_rows) > 10:
        err.print(f"... {len(report.ungradable_rows) - 10} more rows not graded")
    out.print(f"wrote {out_path}")


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", help="Model directory (or hub id when online)."),
    prompts: Path = typer.Option(
        ...,
        "--prompts",
        help="JSONL with a 'prompt' (or 'instruction'/'problem') per line, or a text file, one prompt per line.",
    ),
    out_path: Path = typer.Option(
        ..., "--out", help="Write completions here (JSONL: prompt, responses[{text, tokens}])."
    ),
    n: int = typer.Option(1, "--n", help="Completions per prompt."),
    batch_size: int = typer.Option(32, "--batch-size"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    max_tokens: int = typer.Option(64, "--max-tokens"),
    seed: int = typer.Option(0, "--seed"),
    steer: list[str] = typer.Option(
        [],
        "--steer",
        help="VEC.safetensors:STRENGTH[@LAYER], repeatable: steering vectors added to the residual stream while "
        "generating (see `realign steer`).",
    ),
) -> None:
    """Sample N completions per prompt with batched generation (chat template applied)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from realign.io import atomic_path
    from realign.model.generate import GenerationConfig, generate
    from realign.model.load import ModelLoadError, load_model
    from realign.steer.steering import load_steering, steered

    try:
        cfg = GenerationConfig(
            n=n, batch_size=batch_size, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
        )
        vectors = load_steering(steer)
    except ValueError as exc:
        _fail(str(exc))
    texts = _read_prompts(prompts)
    try:
        lm = load_model(model)
    except ModelLoadError as exc:
        _fail(str(exc))
    with Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("gen", total=len(texts) * n)
        try:
            with steered(lm.model, vectors):
                results = generate(
                    lm.model,
                    lm.tokenizer,
                    texts,
                    cfg,
                    on_progress=lambda done, total: progress.update(task, completed=done),
                )
        except ValueError as exc:  # a vector whose width or layer does not fit this model
            _fail(str(exc))
    with atomic_path(out_path, "w") as fh:
        for p, comps in zip(texts, results):
            fh.write(
                json.dumps({"prompt": p, "responses": [{"text": c.text, "tokens": c.n_tokens} for c in comps]}) + "\n"
            )
    total = sum(c.n_tokens for comps in results for c in comps)
    out.print(
        f"wrote {len(texts) * n} completions ({total} tokens) for {len(texts)} prompts to {out_path}"
        + (f" steered by {', '.join(steer)}" if steer else "")
    )


def _read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        _fail(f"{path}: no such file")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(f"{path}:{n}: invalid JSON ({exc.msg}); expected an object with a 'prompt' field")
            text = next(
                (obj.get(k) for k in ("prompt", "instruction", "problem") if isinstance(obj, dict) and obj.get(k)), None
            )
            if not isinstance(text, str):
                _fail(f"{path}:{n}: no 'prompt', 'instruction' or 'problem' string field")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        _fail(f"{path}: no prompts found")
    return prompts


@model_app.command("tiny")
def model_tiny(
    out_dir: Path = typer.Argument(..., help="Directory to create."),
    hidden: int = typer.Option(128, help="Hidden size."),
    layers: int = typer.Option(2, help="Transformer blocks."),
    vocab: int = typer.Option(2048, help="Vocabulary size."),
    seed: int = typer.Option(0, help="Weight seed (same seed, same model)."),
    force: bool = typer.Option(False, help="Replace OUT_DIR if it exists."),
) -> None:
    """Write a tiny Qwen2 model + offline-trained BPE tokenizer that mlx_lm.load reads."""
    from pydantic import ValidationError

    from realign.model.tiny import TinyModelConfig, build_tiny_model

    try:
        cfg = TinyModelConfig(hidden=hidden, layers=layers, vocab=vocab, seed=seed)
        path = build_tiny_model(out_dir, cfg, force=force)
    except (ValidationError, ValueError, FileExistsError) as exc:
        _fail(str(exc))
    n_params = sum(int(v.size) for v in _load_weights(path).values())
    out.print(
        f"wrote {path} (qwen2, hidden={hidden}, layers={layers}, vocab={vocab}, seed={seed}, {n_params:,} parameters)"
    )


def _load_weights(path: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(path / "model.safetensors"))


@app.command()
def plan(
    model: str = typer.Option(..., "--model", help="A model directory, or a size such as '7B' or 'Qwen 70B'."),
    examples: int = typer.Option(..., "--examples", help="Examples to process."),
    throughput: Optional[list[str]] = typer.Option(None, "--throughput", help="POOL=EX_PER_S, measured (repeatable)."),
    price: Optional[list[str]] = typer.Option(None, "--price", help="POOL=USD_PER_HOUR (repeatable)."),
    seq_len: Optional[int] = typer.Option(
        None,
        "--seq-len",
        min=1,
        help="Tokens per sequence, for KV cache and activations. Default: 1024 for inference, 512 (realign's "
        "max_seq_len) for training.",
    ),
    method: str = typer.Option(
        "inference",
        "--method",
        help="inference (scoring, generation: weights + KV cache), lora or full (training: + gradients, AdamW "
        "state, activations).",
    ),
    quantization: Optional[str] = typer.Option(
        None,
        "--quantization",
        help="Weights' storage: none, bf16, fp16, fp32, 8bit, 4bit (also 2/3/5/6bit). Default: as the model "
        "directory's config.json stores it, bf16 for a size.",
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Sequences per batch (a DPO pair is two). Default: each machine's best batch for inference "
        "(a matching calibration's), 8 for training.",
    ),
    lora_rank: int = typer.Option(8, "--lora-rank", min=1, help="LoRA rank (--method lora)."),
    lora_layers: int = typer.Option(-1, "--lora-layers", min=-1, help="LoRA on the last N blocks; -1 for all."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Machine, batch size, mode, split, environment, estimated time and cost for a job, from its memory."""
    from hardware.plan import make_plan
    from hardware.profiles import load_calibration
    from hardware.sizing import LoRASpec

    def pairs(items, what):
        out_ = {}
        for item in items or []:
            name, _, value = item.partition("=")
            try:
                out_[name] = float(value)
            except ValueError:
                _fail(f"--{what} {item!r}: expected POOL=NUMBER, e.g. m4-max=1.95")
        return out_

    try:
        p = make_plan(
            model,
            examples,
            throughput=pairs(throughput, "throughput") or None,
            price_per_hour=pairs(price, "price") or None,
            seq_len=seq_len,
            method=method,
            quantization=quantization,
            batch_size=batch_size,
            lora=LoRASpec(lora_rank, lora_layers),
            calibration=load_calibration(),
        )
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(p.as_dict()))
        return
    table = Table(title=f"plan: {examples:,} examples on {model} ({p.method})", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    mem = p.memory

    def gb(key):
        return "not estimated" if mem[key] is None else f"{mem[key]:.2f} GB"

    table.add_row("model size", f"{p.params_b:.3g}B parameters, {p.weights_format}")
    table.add_row("memory", f"{mem['total_gb']:.1f} GB at batch {mem['batch']} x {mem['seq_len']} tokens")
    if p.method == "inference":
        parts = [("weights", "weights_gb"), ("KV cache", "kv_cache_gb"), ("activations", "activations_gb")]
    else:  # training keeps no KV cache
        parts = [("weights", "weights_gb")] + ([("adapters", "adapters_gb")] if p.method == "lora" else [])
        parts += [("gradients", "gradients_gb"), ("optimizer", "optimizer_gb"), ("activations", "activations_gb")]
    table.add_row("  breakdown", ", ".join(f"{name} {gb(key)}" for name, key in parts))
    if mem["note"]:
        table.add_row("  assumptions", mem["note"])
    table.add_row("machine", ", ".join(p.machines) + ("" if p.fits else " (does not fit)"))
    table.add_row("mode", f"{p.mode}: {p.reason}")
    table.add_row("batch size", ", ".join(f"{k}={v}" for k, v in p.batch_size.items()))
    table.add_row("calibration", p.calibration)
    table.add_row("split", ", ".join(f"{k}={v:,} ({v / max(1, examples):.1%})" for k, v in p.split.items()))
    table.add_row(
        "throughput", ", ".join(f"{k}={v:g} ex/s" for k, v in p.throughput.items()) + f" [{p.throughput_source}]"
    )
    table.add_row("environment", " ".join(f"{k}={v}" for k, v in p.environment.items()))
    table.add_row(
        "estimated time",
        f"{p.estimated_seconds / 3600:.2f} h ({p.estimated_seconds:,.0f} s)"
        if p.estimated_seconds is not None
        else "not estimated (throughput unknown)",
    )
    table.add_row("cost", f"${p.cost:,.2f} (${p.cost_per_example:.6f}/example)" if p.cost is not None else p.cost_note)
    out.print(table)


@app.command()
def calibrate(
    model: Optional[Path] = typer.Option(
        None, "--model", help="Model directory to sweep (default: a tiny model built for the purpose)."
    ),
    batch_sizes: str = typer.Option("1,2,4,8,16,32,64", "--batch-sizes", help="Comma-separated batch sizes to sweep."),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Tokens generated per sequence."),
    tolerance: float = typer.Option(
        0.05, "--tolerance", help="Chosen batch: the smallest within this fraction of the peak."
    ),
) -> None:
    """Measure this machine: matmul GFLOPS and examples/s per batch size; save the profile later runs use."""

    from hardware.calibrate import calibrate as run_calibration
    from hardware.profiles import detect, match_profile, save_calibration
    from realign.model.tiny import build_tiny_model

    try:
        sizes = sorted({int(x) for x in batch_sizes.split(",") if x.strip()})
    except ValueError:
        _fail(f"--batch-sizes {batch_sizes!r}: expected comma-separated integers, e.g. 1,2,4,8")
    if not sizes or sizes[0] < 1:
        _fail("--batch-sizes needs positive integers")
    with tempfile.TemporaryDirectory() as d:
        model_dir = model or build_tiny_model(Path(d) / "tiny")
        result = run_calibration(
            str(model_dir),
            sizes,
            max_tokens=max_tokens,
            tolerance=tolerance,
            on_point=lambda b, v: err.print(f"batch {b:>4}: {v:8.1f} examples/s"),
            on_threads=lambda n, v, c: err.print(f"BLAS threads {n:>3}: {v:6.2f} training steps/s, {c:.3f} CPU s/step"),
        )
    machine = detect()
    known = match_profile(machine)
    path = save_calibration({**result.as_dict(), "profile": known.name if known else "generic"}, machine)
    table = Table(title=f"calibration: {machine.chip} ({machine.memory_gb:.0f} GB)")
    table.add_column("batch", justify="right")
    table.add_column("examples/s", justify="right")
    table.add_column("")
    for b, v in result.curve.items():
        bar = "#" * max(1, round(30 * v / result.peak_examples_per_s))
        table.add_row(str(b), f"{v:.1f}", bar + ("  <- chosen" if b == result.chosen_batch else ""))
    out.print(table)
    out.print(
        f"matmul: {result.gflops:.1f} GFLOPS; chosen batch {result.chosen_batch} (smallest within "
        f"{tolerance:.0%} of the peak {result.peak_examples_per_s:.1f} examples/s); profile saved to {path}"
    )
    threads = result.blas_threads
    out.print(
        f"OpenBLAS threads: {threads['chosen']} (the fewest within {tolerance:.0%} of the fastest count's training "
        "steps/s; runs on a model like this one use it)"
        if threads
        else "OpenBLAS threads: not measured (no fast BLAS in this process)"
    )
    try:
        from realign.eval.plots import _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(list(result.curve), list(result.curve.values()), marker="o")
        ax.axvline(result.chosen_batch, color="grey", linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("examples/s")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=100)
        plt.close(fig)
        out.print(f"plot: {path.with_suffix('.png')}")
    except Exception as exc:  # the plot is a convenience; the profile is saved either way
        err.print(f"warning: could not draw the plot: {exc}")


run_app = typer.Typer(no_args_is_help=True, help="Run a workflow.")
app.add_typer(run_app, name="run")
runs_app = typer.Typer(help="The runs under a runs root: `realign runs` lists them, `realign runs compare A B`.")
app.add_typer(runs_app, name="runs")
_ROOT = typer.Option(Path("runs"), "--root", help="The runs root (a recipe's runs_root; default runs/).")


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context, root: Path = _ROOT, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the runs, newest first: workflow, tier, key metrics, wall time."""
    if ctx.invoked_subcommand is not None:
        return
    from realign.cli.runs import KEY_METRICS, SHORT_HEADERS, RunsError, list_runs, shown

    try:
        rows = list_runs(root)
    except RunsError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"no runs under {root}")
        return
    table = Table(title=f"runs under {root}")
    columns = ["run", "workflow", "tier", *KEY_METRICS, "wall_time_s"]
    for c in columns:  # short headers: the full names are in --json
        table.add_column(SHORT_HEADERS.get(c, c), overflow="fold", no_wrap=c in ("tier", "run"))
    for r in rows:
        table.add_row(*(shown(r.get(c)) for c in columns))
    out.print(table)


@runs_app.command("compare")
def runs_compare(
    a: str = typer.Argument(..., help="A run directory, or a run name under --root."),
    b: str = typer.Argument(..., help="The other run."),
    root: Path = _ROOT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Two runs' summaries side by side: results, gate tiers, time."""
    from realign.cli.runs import RunsError, compare_runs, shown

    try:
        names, rows = compare_runs(a, b, root)
    except RunsError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"runs": names, "rows": [{"metric": m, names[0]: x, names[1]: y} for m, x, y in rows]}))
        return
    table = Table(title=f"{names[0]} vs {names[1]}")
    for c in ("metric", *names):
        table.add_column(c, overflow="fold")
    for m, x, y in rows:
        table.add_row(m, shown(x), shown(y))
    out.print(table)


# workflow -> (its demo recipe, the recipe loader's module and function, the flow's module and function)
WORKFLOWS = {
    "dpo": ("dpo-demo.yaml", "realign.recipes.dpo", "load_dpo_recipe", "flows.dpo", "dpo"),
    "srf": ("srf-demo.yaml", "realign.recipes.srf", "load_srf_recipe", "flows.srf", "srf"),
    "rlvr": ("rlvr-demo.yaml", "realign.recipes.rlvr", "load_rlvr_recipe", "flows.rlvr", "rlvr"),
    "antihallucination": (
        "antihallucination-demo.yaml",
        "realign.recipes.antihallucination",
        "load_antihallucination_recipe",
        "flows.antihallucination",
        "antihallucination",
    ),
    # `realign demo steer`: abliteration (and steering beside it) of a behaviour the tiny model is taught in stage 1
    "steer": (
        "abliterate-demo.yaml",
        "realign.recipes.abliterate",
        "load_abliterate_recipe",
        "flows.abliterate",
        "abliterate",
    ),
}


def default_recipe(workflow: str = "dpo") -> Path:
    """deployments/<workflow>-demo.yaml of this checkout (the embedded demo)."""
    return REPO / "deployments" / WORKFLOWS[workflow][0]


_CONFIG_HELP = "Recipe YAML (default: deployments/{}-demo.yaml, the embedded demo)."
_RUN_NAME = typer.Option(None, "--run-name", help="Run directory name (same name: resume and reuse cached stages).")
_RUNS_ROOT = typer.Option(None, "--runs-root", help="Where run directories go (default from the recipe: runs/).")


@run_app.command("dpo")
def run_dpo(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP.format("dpo")),
    run_name: Optional[str] = _RUN_NAME,
    runs_root: Optional[str] = _RUNS_ROOT,
) -> None:
    """Run the seven-stage DPO workflow locally (Prefect ephemeral mode; no server needed)."""
    _run_workflow("dpo", config or default_recipe("dpo"), run_name, runs_root)


@run_app.command("srf")
def run_srf(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP.format("srf")),
    run_name: Optional[str] = _RUN_NAME,
    runs_root: Optional[str] = _RUNS_ROOT,
) -> None:
    """Run the seven-stage SRF workflow (reward model, then RL against it) locally (Prefect ephemeral mode)."""
    _run_workflow("srf", config or default_recipe("srf"), run_name, runs_root)


@run_app.command("rlvr")
def run_rlvr(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP.format("rlvr")),
    run_name: Optional[str] = _RUN_NAME,
    runs_root: Optional[str] = _RUNS_ROOT,
) -> None:
    """Run the seven-stage RLVR workflow (verifier, graded samples, GRPO on verifier rewards) locally."""
    _run_workflow("rlvr", config or default_recipe("rlvr"), run_name, runs_root)


@run_app.command("antihallucination")
def run_antihallucination(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP.format("antihallucination")),
    run_name: Optional[str] = _RUN_NAME,
    runs_root: Optional[str] = _RUNS_ROOT,
) -> None:
    """Run the seven-stage anti-hallucination workflow (grounded data, citation training, hallucination detection,
    preference optimisation) locally."""
    _run_workflow("antihallucination", config or default_recipe("antihallucination"), run_name, runs_root)


@run_app.command("abliterate")
def run_abliterate(
    config: Path = typer.Option(None, "--config", help="Recipe YAML (default: deployments/abliterate-demo.yaml)."),
    run_name: Optional[str] = _RUN_NAME,
    runs_root: Optional[str] = _RUNS_ROOT,
) -> None:
    """Run the abliteration workflow (the behaviour measured, its direction extracted, projected out of the weights,
    before/after/steered evaluated) locally; `data.source: files` names your model's prompt files."""
    _run_workflow("steer", config or default_recipe("steer"), run_name, runs_root)


@app.command()
def demo(
    workflow: str = typer.Argument(
        "dpo",
        help="Which workflow's demo: dpo (what `make demo` runs), srf, rlvr, antihallucination or steer "
        "(abliteration and activation steering).",
    ),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under runs/."),
) -> None:
    """A workflow on the tiny model and the embedded tasks, nothing downloaded: `realign demo` (DPO), `realign demo
    srf`, `realign demo rlvr`, `realign demo antihallucination`, `realign demo steer` (a refusal taught to the tiny
    model, then abliterated and steered away)."""
    if workflow not in WORKFLOWS:
        _fail(f"no demo for {workflow!r}: choose one of {', '.join(WORKFLOWS)}")
    _run_workflow(workflow, default_recipe(workflow), run_name, None)


def _run_workflow(workflow: str, recipe: Path, run_name: str | None, runs_root: str | None) -> None:
    # The ephemeral server's usage telemetry races its own SQLite writes ("database is locked"), and cannot reach out.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start; a busy 2-core machine with a fresh database can need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from realign.cli.watchdog import start_watchdog

    start_watchdog()  # killed by any means, this command leaves no temporary Prefect server behind
    # Started first, so it boots while the recipe and the flow's modules load; unused (stopped) when the active
    # Prefect profile names a server, which is known only once Prefect is imported.
    temporary = None
    if not os.environ.get("PREFECT_API_URL"):
        temporary = TemporaryServer(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])).start()
    # The recipe's and the flow's modules (Prefect, GX, MLX) make ~600k objects that live as long as the run: the
    # collector, run while they are made, took ~0.8 s of ~5 s of imports (six full passes over a growing heap).
    gc.disable()  # until _run_flow has imported them
    try:
        _run_flow(workflow, recipe, run_name, runs_root, temporary)
    finally:
        gc.enable()
        if temporary is not None:
            temporary.stop()


def _run_flow(
    workflow: str, recipe: Path, run_name: str | None, runs_root: str | None, temporary: TemporaryServer | None
) -> None:
    # Imported by name: the flows pull in Prefect and GX, which only `run` and `demo` need.
    _, recipe_module, loader, flow_module, flow_name = WORKFLOWS[workflow]
    try:
        cfg = getattr(importlib.import_module(recipe_module), loader)(recipe)
    except ValueError as exc:
        _fail(str(exc))

    updates = {k: v for k, v in (("run_name", run_name), ("runs_root", runs_root)) if v}
    # Named here so the CLI knows where the run writes, even if it fails; validated like the recipe's own fields.
    updates.setdefault("run_name", cfg.run_name or time.strftime(f"{workflow}-%Y%m%d-%H%M%S"))
    try:
        cfg = type(cfg).model_validate({**cfg.model_dump(), **updates})
    except ValueError as exc:
        _fail(f"--run-name {updates['run_name']!r}: a run name is letters, digits, '.', '_' and '-' (no path): {exc}")
    run_dir = Path(cfg.runs_root) / cfg.run_name

    run_flow = getattr(importlib.import_module(flow_module), flow_name)
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        temporary_settings,
    )

    api = PREFECT_API_URL.value()  # the environment's, or the active Prefect profile's
    if api:
        # Prefect reports to the server PREFECT_API_URL names: the run shows in its UI like a deployment's run.
        out.print(f"reporting to the Prefect server at {api}: the run appears under Runs in its UI")
        if temporary is not None:
            temporary.stop()
            temporary = None
    else:
        from realign.cli.server import who_listens

        if who_listens(4200) == "a Prefect server (its /api/health answers)":
            out.print(
                "a Prefect server answers on 127.0.0.1:4200, but this run reports to a temporary one; to watch it in "
                "that UI: export PREFECT_API_URL=http://127.0.0.1:4200/api (then make demo / realign run again)"
            )
    settings = {}
    if temporary is not None:
        try:
            api = temporary.wait()
        except TemporaryServerError as exc:
            _fail(str(exc), code=1)
        # The temporary server serves no UI: no "View at" link to it (Prefect's own temporary server prints none).
        # No heartbeats: they let a lasting server mark a crashed run, and this one stops with the run; the
        # heartbeat thread, joined at the end, would cost up to 1 s.
        settings = {PREFECT_API_URL: api, PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        os.environ["PREFECT_API_URL"] = api  # for any process the run starts
    if _CONSOLE:
        # What the imports made stays for the run: frozen, no later full pass rescans it (the ~7k objects of garbage
        # among it stay too, a few MB). Only in a process that is this one command (not a test's CliRunner).
        gc.freeze()
    gc.enable()
    with temporary_settings(updates=settings):
        try:
            state = run_flow(cfg, return_state=True)
        finally:
            if temporary is not None:  # its last logs and events reach the server before it stops
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    if not state.is_completed():
        # Only this run's own summary (written when its last gate rejected), never one a previous run left there.
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if summary.get("flow_run_id") == str(state.state_details.flow_run_id):
            print_summary(summary)
        err.print(f"[bold red]run failed:[/] {escape(str(state.message))}", markup=True)
        err.print(
            f"Gate reports (gate_<stage>.json) are next to each stage's outputs in {run_dir}; fix the cause and run "
            f"again with --run-name {cfg.run_name} to reuse the stages that passed."
        )
        raise typer.Exit(1)
    print_summary(state.result())


@app.command()
def server(
    port: int = typer.Option(4200, "--port", help="UI and API port on 127.0.0.1."),
    home: Path = typer.Option(
        Path(".prefect-local"), "--home", help="PREFECT_HOME of this server: database, logs, results."
    ),
    storage: Optional[Path] = typer.Option(
        None, "--storage", help="Where task results persist, so retries reuse finished stages (default HOME/results)."
    ),
    timezone: Optional[str] = typer.Option(
        None, "--timezone", help="IANA zone of the nightly 02:00 schedule (default: this machine's)."
    ),
    serve: list[str] = typer.Option(
        [], "--serve", help="Also run a worker here for this pool (e.g. --serve m4-max on the M4 Max)."
    ),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not start the local `realign` pool worker."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to serve on; beyond loopback (e.g. 0.0.0.0) an auth string is required."
    ),
    auth_string: Optional[str] = typer.Option(
        None, "--auth-string", envvar="PREFECT_SERVER_API_AUTH_STRING", help="USER:PASSWORD the API asks for."
    ),
) -> None:
    """Start Prefect on 127.0.0.1 (SQLite), create the pools, deploy prefect.yaml, start a worker; Ctrl-C stops all."""

    from realign.cli.server import POOLS, LocalPrefect, StackError

    if timezone:
        try:
            ZoneInfo(timezone)
        except Exception:
            _fail(f"--timezone {timezone!r} is not an IANA zone name (e.g. Europe/Berlin, America/New_York, UTC)")
    unknown = [p for p in serve if p not in POOLS]
    if unknown:
        _fail(f"--serve {unknown}: pools are {', '.join(POOLS)}")
    from realign.cli.watchdog import start_watchdog

    repo = REPO
    try:
        stack = LocalPrefect(
            home, repo, port=port, storage=storage, timezone=timezone, host=host, auth_string=auth_string
        )
    except StackError as exc:
        _fail(str(exc))
    start_watchdog()  # killed by any means, this command leaves no server or worker behind
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        err.print(f"starting Prefect server on {stack.ui_url} (home {stack.home}) ...")
        stack.start_server()
        stack.create_pools(POOLS)
        err.print("deploying prefect.yaml ...")
        stack.deploy()
        if not no_worker:
            stack.start_worker("realign")
        for pool in serve:
            stack.start_worker(pool)
        out.print(f"[bold]Prefect UI:[/] {escape(stack.ui_url)}", markup=True)
        out.print(
            "deployments: dpo/dpo-demo, srf/srf-demo, rlvr/rlvr-demo, antihallucination/antihallucination-demo, "
            f"curate/nightly-curation (02:00 {stack.timezone}), shard/shard-m4-max, shard/shard-m3-ultra"
        )
        out.print(
            f"workers: {', '.join((['realign'] if not no_worker else []) + serve) or 'none'}; "
            f"results in {stack.storage}; "
            f"runs in {repo / 'runs'}; logs in {stack.home / 'logs'}"
        )
        out.print("Other shells: export PREFECT_API_URL=" + stack.api_url + "   Stop: Ctrl-C")
        while not stopping:
            dead = [name for name, proc, _ in stack.procs if proc.poll() is not None]
            if dead:
                _fail(f"{', '.join(dead)} exited; see {stack.home / 'logs'}")
            time.sleep(1)
    except StackError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        err.print("stopping the server and workers ...")
        stack.stop()


def _shown(value) -> str:
    """A summary value as a person reads it: floats to 4 significant digits, per-round lists joined, None and NaN as
    'not computed'."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN: nothing to show
        return "not computed"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, (float, int, type(None))) for v in value):
        return ", ".join(_shown(v) for v in value) or "none"
    return str(value)


def print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['workflow']} run: {summary['tier']}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in (
        "data_type",
        "workflow",
        "tier",
        "examples_processed",
        "pairs",
        "rounds",
        "machine",
        "generation_batch_size",
        "batch_size_source",
        "dpo_batch_size",
        "reward_model_batch_size",
        "rl_prompts_per_step",
        "rl_num_generations",
        "reward_model_val_accuracy",
        "reward_model_train_val_gap",
        "reward_verifier_spearman",
        "reward_verifier_spearman_within_prompt",
        "verifier",
        "answers_judged_by",
        "tasks",
        "verifiability",
        "false_positive_rate",
        "false_negative_rate",
        "coverage",
        "sampled_verified_rate",
        "heldout_verified_before",
        "heldout_verified_after",
        "rl_kl",
        "rl_entropy",
        "grounded_questions",
        "data_citation_accuracy",
        "citation_factuality",
        "heldout_hallucination_rate",
        "preference_pairs",
        "heldout_factuality_before",
        "heldout_factuality_after",
        "kl_from",
        "wall_time_s",
        "compute_time_s",
        "throughput_examples_per_s",
        "cost_per_example",
    ):
        if key not in summary:  # a workflow reports the facts it has
            continue
        value = summary.get(key)
        if key == "cost_per_example" and value is None:
            value = summary.get("cost_note")
        table.add_row(key, _shown(value))
    for key, value in summary.get("results", {}).items():
        table.add_row(key, _shown(value))
    for stage, tier in summary.get("gate_tiers", {}).items():
        table.add_row(f"gate {stage}", tier)
    for key in ("failure", "run_dir", "final_model", "summary_path"):
        if summary.get(key) is not None:
            table.add_row(key, str(summary[key]))
    for p in summary.get("plots", []):
        table.add_row("plot", p)
    out.print(table)
    for c in summary.get("comparisons", []):
        out.print(c["text"], markup=False)
    out.print(summary.get("verdict", ""), markup=False)


_CONSOLE = False  # set by main(): this process runs one command and then exits


def main() -> None:  # console-script entry point
    global _CONSOLE
    _CONSOLE = True
    # At exit CPython collects the whole heap (Prefect, GX, MLX: ~600k objects) a few times, about 1 s on 2 cores, only
    # to free memory the OS takes back anyway. Registered here, this runs after the exit handlers registered later.
    atexit.register(gc.freeze)
    app()


if __name__ == "__main__":
    sys.exit(main())
