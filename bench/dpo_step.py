"""Tokens/s of a DPO training step (LoRA, batch 8 pairs) on the tiny model, measured in this run.

Prints the compiled step against the same step uncompiled as the in-run baseline.

    python bench/dpo_step.py [--batch 8 --steps 20]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import realign  # noqa: E402,F401
from realign.data.demo import splits  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.logprobs import reference_logps  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402
from realign.train.batches import preference_batches  # noqa: E402
from realign.train.loop import TrainConfig, prepare_model, train  # noqa: E402
from realign.train.objectives import PreferenceLossConfig, preference_loss  # noqa: E402


def run(model_dir, pairs, batch: int, steps: int, compile_: bool) -> float:
    lm = load_model(model_dir)
    ref = reference_logps(lm.model, lm.tokenizer, pairs)
    cfg = TrainConfig(steps=steps, batch_size=batch, learning_rate=1e-4, compile=compile_, metrics_every=steps)
    prepare_model(lm.model, cfg)
    hist = train(
        lm.model, preference_loss(PreferenceLossConfig()), preference_batches(lm.tokenizer, pairs, cfg, ref=ref), cfg
    ).history
    timed = hist[2:-1]  # skip compile/warm-up steps and the last one (it also measures KL)
    return sum(h["tokens"] for h in timed) / sum(h["seconds"] for h in timed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    rows, _ = splits("reverse", 256, 1, seed=0)
    pairs = [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.digits} for e in rows if e.answer != e.digits]
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_tiny_model(Path(d) / "tiny")
        eager = run(model_dir, pairs, args.batch, args.steps, False)
        compiled = run(model_dir, pairs, args.batch, args.steps, True)
    print(f"DPO step, batch {args.batch} pairs (LoRA, tiny model): completion tokens/s")
    print(f"uncompiled : {eager:8.0f}")
    print(f"compiled   : {compiled:8.0f}")
    print(f"ratio      : {compiled / eager:8.2f}x")


if __name__ == "__main__":
    main()
