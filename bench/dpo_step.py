"""DPO training steps/s with per-step metrics on vs off, the padding share and the batch shapes, measured in this run.

Tiny model, DPO (sigmoid) on "reverse" pairs (chosen: the reversed digits, rejected: the digits as given), reference
log-probs cached once; LoRA by default (the KL reference is the base under the adapters), `--full` for full fine-tuning
with a separate frozen reference model, as the demo's DPO stage runs it.

  on      metrics_every=1, as the DPO stage runs it: every step also runs `token_stats` (KL(policy || reference) and
          entropy, full-vocabulary, on completion positions) with the reference's hidden states at the completion
          tokens cached as stage 3 caches them: the policy's logits come from the loss step and the reference's from
          its output head over the cached states, so the extra work is one head projection and the KL and entropy
          at the completion positions, and a sync to read them.
  exact   metrics_every=1 with no cache: the reference's forward pass over the whole batch at every step on top.
  recipe  metrics_every as the DPO recipe's default (DPOStageConfig), with the cache.
  off     metrics_every larger than the block: no step measures, except a call's last step, which always does.

After the blocks, the KL from the cache is set against the KL from the reference's forward pass on the "on"
side's batches, with its final model.

Interleaved rounds (`--blocks`), each one block per side, the order rotated every round (on, exact, recipe, off;
then exact, recipe, off, on; ...) so that no side always runs first or last. A block is one `realign.train.loop.train`
call of `--steps` steps on that side's model, continuing the same batch source where its previous block stopped (so
every side trains on the same batches). Timed: the wall-clock time between consecutive per-step callbacks (everything
the loop does for a step), for steps whose batch shape was seen earlier in the block (each call compiles afresh) and
that are not the block's last (it measures on every side). Rates are medians over blocks of steps/s; ratios (on/off,
target >= 0.9; recipe/off; uncached/off) are medians of the ratios within each round, so that a machine slowing down
or speeding up between rounds cancels (so a ratio is not exactly the quotient of the two median rates printed).

Padding share: over every batch the off side trained on, the input positions (`tokens[:, :-1]`) at or beyond each
row's real length, over all input positions. A row's real length is read from the batch itself: its completion mask
ends at the position that predicts its last token, so length = last masked position + 2.

Where metric time goes: after the blocks, `token_stats` and its parts are timed on one batch (interleaved repeats,
medians): token_stats as the loop calls it (given the loss step's logits) and as held-out checks call it (its own
policy forward), the policy forward, the reference forward, and KL + entropy from given logits.

    python bench/dpo_step.py [--batch 8 --steps 21 --blocks 8 --full]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])

# realign first: it preloads the fast BLAS, which must happen before anything imports mlx.
import realign  # noqa: E402,F401

# isort: split
import mlx.core as mx  # noqa: E402

from realign.data.demo import splits  # noqa: E402
from realign.eval.metrics import masked_kl_and_entropy, token_entropy, token_kl  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.logprobs import HIDDEN_KEYS, reference_logps  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402
from realign.recipes.dpo import DPOStageConfig  # noqa: E402
from realign.train.batches import REF_HIDDEN, preference_batches  # noqa: E402
from realign.train.loop import TrainConfig, adapters_disabled, prepare_model, token_stats, train  # noqa: E402
from realign.train.objectives import PreferenceLossConfig, preference_loss  # noqa: E402


class Side:
    """One model trained in blocks with one metrics setting."""

    def __init__(self, model_dir, pairs, ref, cfg: TrainConfig, full: bool):
        self.lm, self.cfg, self.block, self.batches = load_model(model_dir), cfg, 0, []
        self.reference = load_model(model_dir).model if full else None
        prepare_model(self.lm.model, cfg)
        self.batch_at = preference_batches(self.lm.tokenizer, pairs, cfg, ref=ref)
        self.loss = preference_loss(PreferenceLossConfig())

    def run_block(self) -> tuple[int, float]:
        """(timed steps, their seconds) of one more block."""
        offset, shapes, stamps = self.block * self.cfg.steps, [], []
        self.block += 1

        def batch_at(i: int):
            batch = self.batch_at(offset + i)
            shapes.append(tuple(batch["tokens"].shape))
            self.batches.append(batch)
            return batch

        train(
            self.lm.model,
            self.loss,
            batch_at,
            self.cfg,
            reference=self.reference,
            callback=lambda row: stamps.append(time.perf_counter()),
        )
        seen, secs, n = set(), 0.0, 0
        for j, shape in enumerate(shapes):
            if shape in seen and j < len(shapes) - 1:
                secs, n = secs + stamps[j] - stamps[j - 1], n + 1
            seen.add(shape)
        return n, secs


def padding(batches: list[dict]) -> tuple[float, Counter]:
    """Share of input positions at or beyond their row's real length, and the count of each batch shape."""
    pad = total = 0
    shapes = Counter()
    for batch in batches:
        mask = np.array(batch["mask"])  # [B, T-1]: 1 where position t predicts a completion token t+1
        rows, width = mask.shape
        lengths = width + 1 - np.argmax(mask[:, ::-1] > 0, axis=1)  # last masked position + 2
        pad += int(np.maximum(width - lengths, 0).sum())
        total += rows * width
        shapes[tuple(batch["tokens"].shape)] += 1
    return pad / total, shapes


def where_metric_time_goes(side: Side, reps: int) -> tuple[dict[str, float], float]:
    """Median milliseconds of token_stats and of its parts on the side's most common batch shape, and the share of
    that batch's input positions that are completion positions (the only ones KL and entropy are averaged over)."""
    common = Counter(tuple(b["tokens"].shape) for b in side.batches).most_common(1)[0][0]
    batch = next(b for b in side.batches if tuple(b["tokens"].shape) == common)
    model, inputs, mask = side.lm.model, batch["tokens"][:, :-1], batch["mask"]

    def reference_forward():
        if side.reference is not None:
            return side.reference(inputs)
        with adapters_disabled(model):
            return model(inputs)

    logits, ref_logits = model(inputs), reference_forward()
    mx.eval(logits, ref_logits)

    def kl_entropy_all_positions():  # how token_stats computed them before: every position, five full passes
        n = mask.sum()
        kl = (token_kl(logits, ref_logits) * mask).sum() / n
        entropy = (token_entropy(logits) * mask).sum() / n
        mx.eval(kl, entropy)
        return kl.item(), entropy.item()

    uncached = {k: v for k, v in batch.items() if k != REF_HIDDEN}
    parts = {
        "token_stats, loop": lambda: token_stats(model, batch, side.reference, logits),  # given the step's logits
        "  without the cache": lambda: token_stats(model, uncached, side.reference, logits),
        "token_stats, alone": lambda: token_stats(model, uncached, side.reference),
        "policy forward": lambda: mx.eval(model(inputs)),
        "reference forward": lambda: mx.eval(reference_forward()),
        "KL + entropy": lambda: masked_kl_and_entropy(logits, ref_logits, mask),  # the exact path's
        "  at every position": kl_entropy_all_positions,
        "one exp, [B,T-1,V]": lambda: mx.eval(mx.exp(logits)),
    }
    times = {k: [] for k in parts}
    for _ in range(reps + 1):  # the first round warms up and is dropped
        for name, fn in parts.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ms = {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}
    return ms, float(mask.sum().item()) / mask.size


def cache_against_forward(side: Side, n: int = 20) -> dict[str, float]:
    """Token-weighted mean KL on up to n of the side's batches with its final model: from the cached hidden states
    and from the reference's forward pass, and the largest relative difference of one batch's two values."""
    model, cached, forward, toks, worst = side.lm.model, 0.0, 0.0, 0.0, 0.0
    for batch in side.batches[-n:]:
        logits = model(batch["tokens"][:, :-1])
        plain = {k: v for k, v in batch.items() if k != REF_HIDDEN}
        t = float(batch["mask"].sum().item())
        a = token_stats(model, batch, side.reference, logits)["kl"]
        b = token_stats(model, plain, side.reference, logits)["kl"]
        cached, forward, toks = cached + a * t, forward + b * t, toks + t
        worst = max(worst, abs(a - b) / abs(b) if b else abs(a - b))
    return {
        "cached": cached / toks,
        "forward": forward / toks,
        "max_rel_diff": worst,
        "batches": min(n, len(side.batches)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (2x rows)")
    ap.add_argument(
        "--steps", type=int, default=21, help="steps per block (one train() call); 2 x the recipe's every + 1"
    )
    ap.add_argument(
        "--blocks", type=int, default=8, help="rounds (blocks per side); a multiple of 4 balances the order"
    )
    ap.add_argument("--full", action="store_true", help="full fine-tuning with a separate reference model")
    args = ap.parse_args()
    if args.steps < 3:
        ap.error("--steps must be >= 3 (a block's compiling steps and its last step are not timed)")
    rows, _ = splits("reverse", 256, 1, seed=0)
    pairs = [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.digits} for e in rows if e.answer != e.digits]
    lora = None if args.full else TrainConfig().lora
    recipe_every = DPOStageConfig().train.metrics_every
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_tiny_model(Path(d) / "tiny")
        base = load_model(model_dir)
        # as stage 3 caches it: sums, and the reference's hidden states at every completion token
        ref = reference_logps(base.model, base.tokenizer, pairs, hidden=True)
        exact_ref = {k: v for k, v in ref.items() if k not in HIDDEN_KEYS}
        del base
        common = dict(steps=args.steps, batch_size=args.batch, learning_rate=1e-4, lora=lora)
        sides = {
            "on": Side(model_dir, pairs, ref, TrainConfig(**common, metrics_every=1), args.full),
            "exact": Side(model_dir, pairs, exact_ref, TrainConfig(**common, metrics_every=1), args.full),
            "recipe": Side(model_dir, pairs, ref, TrainConfig(**common, metrics_every=recipe_every), args.full),
            "off": Side(model_dir, pairs, ref, TrainConfig(**common, metrics_every=args.steps + 1), args.full),
        }
        blocks = {k: [] for k in sides}
        names = list(sides)
        for r in range(args.blocks):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                blocks[name].append(sides[name].run_block())
        parts, completion_share = where_metric_time_goes(sides["on"], reps=10)
        versus = cache_against_forward(sides["on"])
    timed = {k: sum(n for n, _ in v) for k, v in blocks.items()}
    if not all(timed.values()):
        reason = "no step was timed (each compiled a new shape or was a block's last); raise --steps"
        print(f"not measured: {reason}")
        print("RESULT " + json.dumps({"bench": "dpo_step", "measured": None, "reason": reason}))
        return
    rate = {k: statistics.median(n / s for n, s in v if n) for k, v in blocks.items()}

    def paired(side: str) -> float:
        """Median over rounds of the side's steps/s over the off side's in its round; NaN if no round timed both."""
        pairs = [(n / s) / (m / t) for (n, s), (m, t) in zip(blocks[side], blocks["off"]) if n and m]
        return statistics.median(pairs) if pairs else float("nan")

    ratio, recipe_ratio, exact_ratio = (paired(k) for k in ("on", "recipe", "exact"))
    share, shapes = padding(sides["off"].batches)
    mode = "full fine-tuning, separate reference" if args.full else "LoRA, reference = base under the adapters"
    print(
        f"DPO step, batch {args.batch} pairs, tiny model ({mode}); {args.blocks} interleaved blocks of "
        f"{args.steps} steps per side, rotated order; rates: medians over blocks, ratios: medians of each round's"
    )
    print(f"metrics every step (on) : {rate['on']:7.2f} steps/s  ({timed['on']} timed steps; reference states cached)")
    print(
        f"  without the cache     : {rate['exact']:7.2f} steps/s  ({timed['exact']} timed steps; a reference forward)"
    )
    print(f"metrics every {recipe_every:<2} (recipe): {rate['recipe']:7.2f} steps/s  ({timed['recipe']} timed steps)")
    print(f"metrics off             : {rate['off']:7.2f} steps/s  ({timed['off']} timed steps)")
    print(f"ratio on/off            : {ratio:7.2f}x  (target >= 0.9)")
    print(f"ratio uncached/off      : {exact_ratio:7.2f}x")
    print(f"ratio recipe/off        : {recipe_ratio:7.2f}x")
    print(
        f"KL from the cache vs from the reference's forward, {versus['batches']} of the on side's batches, its final "
        f"model: {versus['cached']:.6e} vs {versus['forward']:.6e} nats/token (largest relative difference of a "
        f"batch {versus['max_rel_diff']:.1e})"
    )
    step_ms = 1e3 / rate["off"]
    print(f"where metric time goes (ms, median of 10; a step without metrics takes {step_ms:.1f} ms):")
    for name, ms in parts.items():
        print(f"  {name:18} {ms:7.2f} ms  ({ms / step_ms:5.1%} of a step without metrics)")
    print(
        f"  KL and entropy are computed on completion positions only ({completion_share:.0%} of the input "
        "positions); with the cache, the reference's logits there come from its head over the cached states"
    )
    print(
        f"padding: {share:.1%} of the input positions of the {len(sides['off'].batches)} batches trained on "
        f"(tokens[:, :-1], at or beyond each row's length)"
    )
    print(
        f"distinct batch shapes: {len(shapes)}  " + ", ".join(f"{s[0]}x{s[1]}: {n}" for s, n in sorted(shapes.items()))
    )
    result = {
        "bench": "dpo_step",
        "metric": "DPO steps/s, per-step metrics on vs off",
        "measured": rate["on"],
        "baseline": rate["off"],
        "ratio": ratio,
        "target": 0.9,
        "recipe_metrics_every": recipe_every,
        "recipe_ratio": recipe_ratio,
        "exact_ratio": exact_ratio,
        "kl_cache_vs_forward": versus,
        "padding_share": share,
        "batch_shapes": len(shapes),
        "metric_ms": parts,
        "extra_rows": [
            {
                "metric": "DPO steps/s, per-step metrics without the reference cache (a reference forward) vs off",
                "measured": rate["exact"],
                "baseline": rate["off"],
                "ratio": exact_ratio,
            },
            {
                "metric": "per-step KL from the cached reference states vs from its forward pass",
                "measured": versus["cached"],
                "baseline": versus["forward"],
                "ratio": versus["cached"] / versus["forward"] if versus["forward"] > 0 else None,
            },
            {
                "metric": f"DPO steps/s, metrics every {recipe_every} (the recipe) vs off",
                "measured": rate["recipe"],
                "baseline": rate["off"],
                "ratio": recipe_ratio,
                "target": 0.9,
            },
            {"metric": "padded share of the DPO batches' positions", "measured": share, "target_max": 0.10},
        ],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
