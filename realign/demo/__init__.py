"""The default demo: an end-to-end job on embedded data, no downloads.

Until the DPO workflow lands this builds the tiny model, validates an embedded
preference file (with deliberately bad rows, to show the rejects file), and
generates from the model through its chat template.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def arithmetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` DPO rows: a sum question, the right answer (chosen) and an off-by-k one (rejected)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{wrong}"})
    return rows


def run_demo(workdir: Path, console: Console | None = None) -> dict:
    """Run the demo in `workdir`; returns the numbers it printed."""
    import mlx_lm

    from realign.formats import validate_file
    from realign.models import load_model
    from realign.tiny import TinyModelConfig, build_tiny_model

    console = console or Console()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model_dir = build_tiny_model(workdir / "tiny-model", TinyModelConfig(), force=True)
    console.print(f"[bold]1/3[/] built tiny Qwen2 model in {model_dir} ({time.perf_counter() - t0:.1f}s)")

    data = workdir / "pairs.jsonl"
    lines = [json.dumps(r) for r in arithmetic_pairs(200)]
    lines[10] = json.dumps({"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "4"})  # identical
    lines[20] = '{"prompt": "What is 1 + 1?", "chosen": "2"'  # truncated JSON
    data.write_text("\n".join(lines) + "\n")
    report = validate_file(data, "dpo", out=workdir / "pairs.clean.jsonl", rejects=workdir / "pairs.rejects.jsonl",
                           on_problem=lambda m: console.print(f"    {m}", markup=False))
    console.print(f"[bold]2/3[/] validated {data}: {report.valid} good rows kept, {report.rejected} rejected with reasons")

    lm = load_model(model_dir)
    prompts = [r["prompt"] for r in arithmetic_pairs(3, seed=1)]
    table = Table(title="generations (random tiny model: expect noise)")
    table.add_column("prompt")
    table.add_column("completion")
    table.add_column("tokens", justify="right")
    n_tokens, t1 = 0, time.perf_counter()
    for p in prompts:
        chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        text, k = "", 0
        for step in mlx_lm.stream_generate(lm.model, lm.tokenizer, chat, max_tokens=12):
            text += step.text
            k = step.generation_tokens  # tokens actually sampled, not a re-encoding of the text
        n_tokens += k
        table.add_row(p, repr(text), str(k))
    gen_s = time.perf_counter() - t1
    console.print(f"[bold]3/3[/] generated {n_tokens} tokens in {gen_s:.2f}s ({n_tokens / gen_s:.0f} tok/s)")
    console.print(table)
    return {"valid": report.valid, "rejected": report.rejected, "tokens": n_tokens, "seconds": gen_s}
