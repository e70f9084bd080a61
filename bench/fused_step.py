"""The training step with clipping and the AdamW update inside the compiled graph vs outside it, measured in this run.

Tiny model, SFT on digit-reversal rows, one fixed batch of `--batch` rows, gradient clipping at 1.0, AdamW:
  separate  the compiled gradient step, then `clip_grad_norm` and `optimizer.update` eagerly (what
            `realign.train.loop.train` does with gradient accumulation; before, always);
  fused     gradient, clipping and update in one compiled function over the model, optimizer and random state
            (what `train` does without accumulation).
Both sides are built the same way as the loop builds them; each warms up (compiles) first, then interleaved rounds of
`--steps` steps each; medians of ms per step; ratio separate / fused (speed-up). Full fine-tuning and LoRA.

    python bench/fused_step.py [--batch 16 --steps 10 --rounds 5]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# realign first: it preloads the fast BLAS, which must happen before anything imports mlx.
import realign  # noqa: E402,F401

# isort: split
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402

from realign.data.demo import splits  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402
from realign.train.batches import POLICY_LOGITS, sft_batches  # noqa: E402
from realign.train.loop import TrainConfig, make_optimizer, prepare_model  # noqa: E402
from realign.train.objectives import sft_loss  # noqa: E402


def make_step(model_dir: Path, rows: list, cfg: TrainConfig, fused: bool):
    lm = load_model(model_dir)
    prepare_model(lm.model, cfg)
    model, opt = lm.model, make_optimizer(cfg)
    value_and_grad = nn.value_and_grad(model, lambda b: sft_loss(model, b))

    def grads_of(batch):
        (loss, metrics), grads = value_and_grad(batch)
        metrics.pop(POLICY_LOGITS)
        return loss, grads

    if fused:
        opt.init(model.trainable_parameters())
        state = [model.state, opt.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def update(batch):
            loss, grads = grads_of(batch)
            grads, norm = optim.clip_grad_norm(grads, cfg.max_grad_norm)
            opt.update(model, grads)
            return loss, norm

        def step(batch):
            mx.eval(update(batch), state)

    else:
        state = [model.state, mx.random.state]
        compiled = partial(mx.compile, inputs=state, outputs=state)(grads_of)

        def step(batch):
            loss, grads = compiled(batch)
            grads, norm = optim.clip_grad_norm(grads, cfg.max_grad_norm)
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state, loss, norm)

    batch = sft_batches(lm.tokenizer, rows, cfg)(0)
    step(batch), step(batch)  # compile and warm up
    return lambda: step(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    train_rows, _ = splits("reverse", 256, 1, seed=0)
    rows = [(e.prompt, e.answer) for e in train_rows]
    ms = {}
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_tiny_model(Path(d) / "tiny")
        for mode, lora in (("full", None), ("lora", TrainConfig().lora)):
            cfg = TrainConfig(steps=1000, batch_size=args.batch, lora=lora)
            sides = {
                name: make_step(model_dir, rows, cfg, fused) for name, fused in (("separate", False), ("fused", True))
            }
            times = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, step in sides.items():
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    times[name].append((time.perf_counter() - t) / args.steps)
            ms[mode] = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    print(f"SFT step, tiny model, batch {args.batch}, clipping at 1.0; medians of {args.rounds} rounds x {args.steps}")
    for mode, m in ms.items():
        print(
            f"{mode:5}: update outside the compiled step {m['separate']:7.1f} ms, inside {m['fused']:7.1f} ms: "
            f"{m['separate'] / m['fused']:.2f}x"
        )
    full, lora = ms["full"], ms["lora"]
    result = {
        "bench": "fused_step",
        "metric": "full fine-tuning steps/s, update inside vs outside the compiled step",
        "measured": 1e3 / full["fused"],
        "baseline": 1e3 / full["separate"],
        "ratio": full["separate"] / full["fused"],
        "target": 1.0,
        "extra_rows": [
            {
                "metric": "LoRA steps/s, update inside vs outside the compiled step",
                "measured": 1e3 / lora["fused"],
                "baseline": 1e3 / lora["separate"],
                "ratio": lora["separate"] / lora["fused"],
                "target": 1.0,
            }
        ],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
