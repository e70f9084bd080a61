"""One RL update's gradient on fixed samples, on 1 process or summed over `mlx.launch` ranks (test_distributed).

usage: dist_rl_grad.py MODEL OUT_DIR [SHARES]   (SHARES e.g. "3,1"; none: even)
Every rank draws the same samples (same model, prompts and seed, all prompts), keeps its own prompts' groups, and
goes through the loop's own functions: score_samples with the rank pool (pooled advantages), loss_shares,
rollout_gradient. Rank 0 writes OUT_DIR/grad-{grpo,grpo-seq,rloo}.safetensors and advantages-{...}.json (its own).
"""

import json  # noqa: I001  (realign, and its fast BLAS, must be imported before mlx)
import sys
from pathlib import Path

import realign  # noqa: F401  (the fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from realign.model.load import load_model
from realign.train.distributed import gather_ragged, split_counts, world
from realign.train.loop import TrainConfig, prepare_model
from realign.train.rl import RLConfig, _sample, loss_shares, rank_pool, rl_loss, rollout_gradient, score_samples

model_dir, out = sys.argv[1:3]
shares = tuple(float(x) for x in sys.argv[3].split(",")) if len(sys.argv) > 3 and sys.argv[3] else None
group = world()
rank, size = group.rank(), group.size()
train = TrainConfig(lora=None, batch_size=4, compile=False)
lm, reference = load_model(model_dir), load_model(model_dir).model
prepare_model(lm.model, train)
prompts = [f"Reverse: {1000 + 37 * i}" for i in range(4)]


def reward(prompts: list[str], texts: list[str]) -> list[float]:
    # a function of the text alone (a rank scores its own samples), spread out; some unscorable (NaN), left out of
    # their group's statistics
    codes = [sum(map(ord, t)) for t in texts]
    return [float("nan") if c % 13 == 0 else (c % 7) / 6 for c in codes]


configs = {
    # token-weighted loss, batch-level reward scaling: both need every rank's numbers
    "grpo": RLConfig(num_generations=4, max_completion_length=6, loss_type="dapo", scale_rewards="batch", train=train),
    # sequence-weighted loss (each completion's token mean, averaged over completions), group-scaled rewards
    "grpo-seq": RLConfig(num_generations=4, max_completion_length=6, loss_type="grpo", train=train),
    # sequence-weighted loss, batch-normalised advantages with the KL penalty in the reward
    "rloo": RLConfig(
        estimator="rloo", num_generations=4, max_completion_length=6, normalize_advantages=True, beta=0.5, train=train
    ),
}
for name, cfg in configs.items():
    G = cfg.num_generations
    texts, encoded, lengths = _sample(lm.model, lm.tokenizer, prompts, cfg, seed=0)  # the same on every rank
    counts = split_counts(len(prompts), shares if size > 1 else None, size)
    a, b = sum(counts[:rank]) * G, sum(counts[: rank + 1]) * G
    pool = rank_pool(counts, G, group) if size > 1 else None
    mine = [p for p in prompts for _ in range(G)][a:b:G]
    roll = score_samples(
        lm.model, reference, lm.tokenizer, mine, texts[a:b], encoded[a:b], lengths[a:b], reward, cfg, pool
    )
    value_and_grad = nn.value_and_grad(lm.model, lambda batch, cfg=cfg: rl_loss(cfg)(lm.model, batch))

    def grad_step(batch):
        (loss, metrics), grads = value_and_grad(batch)
        return loss, metrics, grads

    group_or_none = group if size > 1 else None
    sums: dict[str, float] = {}
    grads, _, _ = rollout_gradient(grad_step, [roll], loss_shares(cfg, [roll], group_or_none), group_or_none, sums)
    flat = dict(tree_flatten(grads))
    mx.eval(flat)
    advantages = gather_ragged(roll.advantages, [c * G for c in counts], group) if size > 1 else roll.advantages
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(Path(out) / f"grad-{name}.safetensors"), flat)
        (Path(out) / f"advantages-{name}.json").write_text(json.dumps([float(x) for x in advantages]))
