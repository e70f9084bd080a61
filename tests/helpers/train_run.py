"""A training run in its own process, for the kill-and-resume test.

    python tests/helpers/train_run.py MODEL_DIR OUT_DIR STEPS [SLOW_AFTER]
Prints `step N` after each step; sleeps 2 s per step after SLOW_AFTER so a test can kill it.
"""

import sys
import time

import mlx.core as mx
from mlx.utils import tree_flatten

import realign  # noqa: F401
from realign.data.demo import splits
from realign.model.load import load_model
from realign.train.batches import sft_batches
from realign.train.loop import TrainConfig, prepare_model, train
from realign.train.objectives import sft_loss

model_dir, out_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
slow_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
cfg = TrainConfig(
    steps=steps,
    batch_size=8,
    learning_rate=1e-3,
    warmup_steps=2,
    checkpoint_every=3,
    seed=5,
    lora={"rank": 4, "scale": 10.0},
)
lm = load_model(model_dir)
prepare_model(lm.model, cfg)
train_rows, _ = splits("reverse", 64, 1, seed=1)
source = sft_batches(lm.tokenizer, [(e.prompt, e.answer) for e in train_rows], cfg)


def report(row):
    print(f"step {row['step']}", flush=True)
    if slow_after is not None and row["step"] >= slow_after:
        time.sleep(2)


result = train(lm.model, sft_loss, source, cfg, out_dir=out_dir, callback=report)
weights = dict(tree_flatten(lm.model.trainable_parameters()))
mx.save_safetensors(f"{out_dir}/final.safetensors", weights)
print(f"done resumed_from={result.resumed_from} steps={result.steps_done}", flush=True)
