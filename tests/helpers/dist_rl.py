"""RL training (GRPO, LoRA) for a few steps on 1 process or over `mlx.launch` ranks (tests/test_distributed.py).

usage: dist_rl.py MODEL OUT_DIR STEPS [SHARES [DIE_AFTER]]   (SHARES e.g. "3,1"; none: even)
DIE_AFTER N: rank 0 exits right after writing its step-N checkpoint (the resume test).
Rank 0 writes OUT_DIR/result.json: the history, steps done, where it resumed from and how far apart the ranks'
trainable weights ended (0.0: every rank applied the same summed gradient), and OUT_DIR/trainable.safetensors.
Checkpoints every 2 steps under OUT_DIR/checkpoints (rank 0), so a relaunch resumes.
"""

import json  # noqa: I001  (realign, and its fast BLAS, must be imported before mlx)
import sys
from pathlib import Path

import realign  # noqa: F401  (the fast BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from realign.model.load import load_model
from realign.train.distributed import DataParallel, rank_divergence, world
from realign.train.loop import TrainConfig, prepare_model
import realign.train.rl as rl
from realign.train.rl import RLConfig, rl_train

model_dir, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
shares = tuple(float(x) for x in sys.argv[4].split(",")) if len(sys.argv) > 4 and sys.argv[4] else None
die_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
group = world()
save = rl.save_checkpoint


def save_then_die(root, step, *args, **kwargs):
    path = save(root, step, *args, **kwargs)
    if step == die_after:
        raise SystemExit(f"rank 0 dies after its step-{step} checkpoint (test)")
    return path


rl.save_checkpoint = save_then_die  # rl_train looks it up on realign.train.rl at call time
train = TrainConfig(steps=steps, batch_size=4, learning_rate=5e-3, lora={"rank": 4}, checkpoint_every=2)
cfg = RLConfig(num_generations=4, max_completion_length=6, train=train)
lm = load_model(model_dir)
prepare_model(lm.model, train)
prompts = [f"Reverse: {1000 + 37 * i}" for i in range(12)]


def reward(prompts: list[str], texts: list[str]) -> list[float]:
    return [(sum(map(ord, t)) % 7) / 6 for t in texts]  # a function of the text, spread out (the untrained model's)


parallel = DataParallel(group, shares=shares) if group.size() > 1 else None
result = rl_train(lm.model, lm.tokenizer, prompts, reward, cfg, out_dir=out, parallel=parallel)
trainable = dict(tree_flatten(lm.model.trainable_parameters()))
divergence = rank_divergence(trainable, group)
if group.rank() == 0:
    mx.save_safetensors(str(out / "trainable.safetensors"), trainable)
    summary = {
        "steps_done": result.steps_done,
        "resumed_from": result.resumed_from,
        "history": result.history,
        "rank_divergence": divergence,
        "ranks": group.size(),
    }
    (out / "result.json").write_text(json.dumps(summary))
