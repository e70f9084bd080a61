"""An RL training run in its own process, for the kill-and-resume test.

    python tests/helpers/rl_run.py MODEL_DIR OUT_DIR STEPS [SLOW_AFTER]
Prints `step N` after each step; sleeps 2 s per step after SLOW_AFTER so a test can kill it.
"""

import sys
import time

import mlx.core as mx
from mlx.utils import tree_flatten

import realign  # noqa: F401
from realign.data.demo import splits
from realign.model.load import load_model
from realign.score.verifiers import positional_match
from realign.train.loop import TrainConfig, prepare_model
from realign.train.rl import RLConfig, rl_train

model_dir, out_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
slow_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
cfg = RLConfig(
    num_generations=4,
    num_iterations=2,
    beta=0.04,
    max_completion_length=6,
    train=TrainConfig(steps=steps, batch_size=4, learning_rate=1e-3, checkpoint_every=3, seed=5, lora={"rank": 4}),
)
lm = load_model(model_dir)
prepare_model(lm.model, cfg.train)
rows, _ = splits("reverse", 32, 1, seed=1)
answers = {e.prompt: e.answer for e in rows}


def reward(prompts, completions):
    return [positional_match(c, answers[p]) for p, c in zip(prompts, completions)]


def report(row):
    print(f"step {row['step']}", flush=True)
    if slow_after is not None and row["step"] >= slow_after:
        time.sleep(2)


result = rl_train(lm.model, lm.tokenizer, list(answers), reward, cfg, out_dir=out_dir, callback=report)
mx.save_safetensors(f"{out_dir}/final.safetensors", dict(tree_flatten(lm.model.trainable_parameters())))
print(f"done resumed_from={result.resumed_from} steps={result.steps_done}", flush=True)
