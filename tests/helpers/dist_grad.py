"""One global batch's gradient, on 1 process or summed over `mlx.launch` ranks (tests/test_distributed.py).

usage: dist_grad.py MODEL SFT_JSONL PAIRS_JSONL OUT_DIR [SHARES]   (SHARES e.g. "3,1"; none: even)
Rank 0 writes OUT_DIR/grad-{sft,preference,reward}.safetensors (the loss under "__loss__"): SFT, DPO and the reward
model's Bradley-Terry loss.
"""

import json  # noqa: I001  (realign, and its fast BLAS, must be imported before mlx)
import sys
from pathlib import Path

import realign  # noqa: F401  (the fast BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from realign.model.load import load_model
from realign.model.logprobs import reference_logps
from realign.train.batches import preference_batches, sft_batches
from realign.train.distributed import DataParallel, global_gradient, world
from realign.train.loop import TrainConfig, prepare_model
from realign.score.reward_model import reward_model_batches, reward_model_loss, sequence_reward_model
from realign.train.objectives import PreferenceLossConfig, preference_loss, sft_loss

model_dir, sft_path, pairs_path, out = sys.argv[1:5]
shares = tuple(float(x) for x in sys.argv[5].split(",")) if len(sys.argv) > 5 and sys.argv[5] else None
group = world()
cfg = TrainConfig(batch_size=8, lora=None, max_seq_len=64)
lm = load_model(model_dir)
rows = [json.loads(line) for line in open(sft_path)]
pairs = [json.loads(line) for line in open(pairs_path)]
ref = reference_logps(lm.model, lm.tokenizer, pairs, max_len=cfg.max_seq_len)
prepare_model(lm.model, cfg)
jobs = {
    "sft": (sft_loss, sft_batches(lm.tokenizer, [(r["prompt"], r["completion"]) for r in rows], cfg), "rows", "tokens"),
    "preference": (
        preference_loss(PreferenceLossConfig()),
        preference_batches(lm.tokenizer, pairs, cfg, ref=ref),
        "pairs",
        "examples",
    ),
    "reward": (reward_model_loss, reward_model_batches(lm.tokenizer, pairs, cfg), "pairs", "examples"),
}
reward_model = sequence_reward_model(lm.model, seed=0)
reward_model.unfreeze()
for kind, (loss_fn, batches, layout, weight_by) in jobs.items():
    parallel = DataParallel(group, layout=layout, weight_by=weight_by, shares=shares) if group.size() > 1 else None
    model = reward_model if kind == "reward" else lm.model
    loss, grads = global_gradient(model, loss_fn, batches(0), parallel)
    flat = dict(tree_flatten(grads))
    flat["__loss__"] = loss.reshape(1)
    mx.eval(flat)
    if group.rank() == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(Path(out) / f"grad-{kind}.safetensors"), flat)
