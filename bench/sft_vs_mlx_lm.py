"""realign's LoRA SFT step against mlx-lm's own LoRA trainer (`mlx_lm.tuner.trainer.train`), measured in this run.

Same tiny model, same rows (the demo's SFT rows, `load_data(DataConfig()).sft`), same batch size, same LoRA
(`linear_to_lora_layers` with the same rank, scale, dropout, number of blocks and default keys, same seed; the
trainable parameter counts are checked equal), same max sequence length, same optimizer (realign's AdamW + cosine
schedule object from `make_optimizer`; mlx-lm's trainer takes any optimizer).

Each side runs as blocks of `--steps` steps, alternating realign, mlx-lm, realign, ... (`--rounds` blocks each), so
machine noise hits every side; each figure is the median over that side's blocks. A block is one call of each
trainer's own loop on a model that keeps its LoRA weights between blocks:

- realign: `realign.train.loop.train` with `sft_loss` over `sft_batches` (compiled gradient step; metrics_every >
  steps, so no KL/entropy passes: the last step of a call always measures them, so it is not timed).
- mlx-lm: `mlx_lm.tuner.trainer.train` with its `default_loss`, its compiled `step` (loss, gradient and optimizer
  update) and its `iterate_batches` over `CacheDataset(CompletionsDataset(..., mask_prompt=True))`, as
  `mlx_lm.lora` builds them; steps_per_report=1 so its `on_train_loss_report` callback fires after every step
  (its rich console output is discarded). Twice: at its default clear_cache_threshold=0 (the allocator cache is
  emptied after every step) and at 1 TB ("keep"); the baseline is the faster of the two.

Timed, on every side: the wall-clock time between consecutive per-step callbacks, i.e. everything the loop does for
one step (drawing and padding the batch, the step, its bookkeeping and reporting). A step is not timed when its batch
shape is new in its block (each call compiles afresh; this also drops each block's first step). Each loop's own
per-step clock is printed too: realign's `seconds` (includes building the batch) and mlx-lm's
`1 / iterations_per_second` (from after the batch is drawn to after its `mx.eval`).

Trained tokens are counted two ways. "answer+stop": each row's completion up to and including its first stop token,
what realign's mask trains on, counted on mlx-lm's rows too (they add the chat template's newline after the stop
token). "own": each loss's own count; mlx-lm's `default_loss` mask runs from the offset to the length inclusive, so
it also counts that newline and one padding position per row. Both sides see the same rows at the same batch size, so
steps/s is the like-for-like figure (the RESULT ratio).

    python bench/sft_vs_mlx_lm.py [--batch 32 --steps 24 --rounds 3 --rank 8 --scale 20 --layers -1]
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])

# realign first: it preloads the fast BLAS, which must happen before anything imports mlx.
import realign  # noqa: E402,F401

# isort: split
import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.tuner import trainer as mlx_trainer  # noqa: E402
from mlx_lm.tuner.callbacks import TrainingCallback  # noqa: E402
from mlx_lm.tuner.datasets import CacheDataset, CompletionsDataset  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

from realign.data.datasets import DataConfig, load_data  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402
from realign.train.batches import sft_batches  # noqa: E402
from realign.train.loop import LoRAConfig, TrainConfig, make_optimizer, prepare_model, train  # noqa: E402
from realign.train.objectives import sft_loss  # noqa: E402


def timed_steps(shapes: list[tuple], skip_last: bool) -> list[int]:
    """Steps of one block (0-based) that are timed: their batch shape was seen earlier in the block (so they do not
    compile, and none is the first step, whose interval would include the call's set-up); with skip_last, not the
    last step."""
    seen, keep = set(), []
    for j, shape in enumerate(shapes):
        if shape in seen and not (skip_last and j == len(shapes) - 1):
            keep.append(j)
        seen.add(shape)
    return keep


def block_figures(keep, stamps, own, common, counted, shapes) -> dict:
    """Sums over a block's timed steps: steps, wall seconds, own-clock seconds, tokens (both counts), input widths."""
    return {
        "steps": len(keep),
        "wall": sum(stamps[j] - stamps[j - 1] for j in keep),
        "own": sum(own[j] for j in keep),
        "common": sum(common[j] for j in keep),
        "counted": sum(counted[j] for j in keep),
        "width": sum(shapes[j][1] - 1 for j in keep),
    }


def summarize(blocks: list[dict]) -> dict:
    """Medians over blocks of the rates; means over all timed steps of the per-step sizes."""
    steps = sum(b["steps"] for b in blocks)
    return {
        "steps_per_s": statistics.median(b["steps"] / b["wall"] for b in blocks),
        "common_per_s": statistics.median(b["common"] / b["wall"] for b in blocks),
        "counted_per_s": statistics.median(b["counted"] / b["wall"] for b in blocks),
        "own_steps_per_s": statistics.median(b["steps"] / b["own"] for b in blocks),
        "common_per_step": sum(b["common"] for b in blocks) / steps,
        "width": sum(b["width"] for b in blocks) / steps,
        "timed": steps,
    }


class Realign:
    def __init__(self, model_dir: Path, rows: list[tuple], cfg: TrainConfig):
        self.lm, self.cfg, self.block = load_model(model_dir), cfg, 0
        prepare_model(self.lm.model, cfg)
        self.model = self.lm.model
        self.batch_at = sft_batches(self.lm.tokenizer, rows, cfg)

    def run_block(self) -> dict:
        offset, shapes, stamps, rows = self.block * self.cfg.steps, [], [], []
        self.block += 1

        def batch_at(i: int):
            batch = self.batch_at(offset + i)  # continue the data where the previous block stopped
            shapes.append(tuple(batch["tokens"].shape))
            return batch

        def on_step(row: dict) -> None:
            stamps.append(time.perf_counter())
            rows.append(row)

        train(self.model, sft_loss, batch_at, self.cfg, callback=on_step)
        tokens = [r["tokens"] for r in rows]  # its mask: answer + stop token, so both counts are the same
        keep = timed_steps(shapes, skip_last=True)
        return block_figures(keep, stamps, [r["seconds"] for r in rows], tokens, tokens, shapes)


class MlxLm:
    def __init__(self, model_dir: Path, rows: list[tuple], cfg: TrainConfig, adapter_dir: Path, clear_cache: int):
        self.model, self.tokenizer = mlx_lm.load(str(model_dir))
        self.cfg = cfg
        mx.random.seed(cfg.seed)  # the same adapter init as realign's prepare_model
        self.model.freeze()
        n = len(self.model.layers) if cfg.lora.layers == -1 else cfg.lora.layers
        lora = {"rank": cfg.lora.rank, "scale": cfg.lora.scale, "dropout": cfg.lora.dropout}
        linear_to_lora_layers(self.model, n, lora)
        data = [{"prompt": p, "completion": c} for p, c in rows]
        self.dataset = CacheDataset(CompletionsDataset(data, self.tokenizer, "prompt", "completion", mask_prompt=True))
        self.stop = set(self.tokenizer.eos_token_ids)
        self.args = mlx_trainer.TrainingArgs(
            batch_size=cfg.batch_size,
            iters=cfg.steps,
            steps_per_report=1,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=cfg.max_seq_len,
            adapter_file=str(adapter_dir / f"adapters_{clear_cache}.safetensors"),
            clear_cache_threshold=clear_cache,
        )

    def answer_and_stop(self, tokens: mx.array, lengths: mx.array) -> int:
        """Completion tokens up to and including the first stop token, summed over the batch's rows."""
        total = 0
        for row, (offset, length) in zip(np.array(tokens), np.array(lengths)):
            completion = row[offset:length].tolist()
            ends = [k for k, t in enumerate(completion) if t in self.stop]
            total += ends[0] + 1 if ends else len(completion)
        return total

    def run_block(self) -> dict:
        shapes, stamps, infos, common = [], [], [], []

        def batches(**kw):  # mlx-lm's own batches, observed on their way to its step
            for batch in mlx_trainer.iterate_batches(**kw):
                shapes.append(tuple(batch[0].shape))
                common.append(self.answer_and_stop(*batch))
                yield batch

        class Report(TrainingCallback):
            def on_train_loss_report(self, info: dict) -> None:
                stamps.append(time.perf_counter())
                infos.append(info)

        with contextlib.redirect_stdout(io.StringIO()):  # its progress bar and per-step report lines
            mlx_trainer.train(
                self.model,
                make_optimizer(self.cfg),
                self.dataset,
                args=self.args,
                iterate_batches=batches,
                training_callback=Report(),
            )
        running = [0, *(i["trained_tokens"] for i in infos)]  # its report gives a running total
        counted = [b - a for a, b in zip(running, running[1:])]
        own = [1 / i["iterations_per_second"] for i in infos]  # steps_per_report=1: the step's own train_time
        return block_figures(timed_steps(shapes, skip_last=False), stamps, own, common, counted, shapes)


def trainable(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=24, help="steps per block (one call of each trainer)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per side, interleaved")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--layers", type=int, default=-1, help="LoRA on the last N blocks; -1 all")
    ap.add_argument("--max-seq-len", type=int, default=512)
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be >= 4 (steps that compile a new shape and a block's last step are not timed)")
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=1e-4,
        max_seq_len=args.max_seq_len,
        lora=LoRAConfig(rank=args.rank, scale=args.scale, layers=args.layers),
        metrics_every=args.steps + 1,
    )
    rows = load_data(DataConfig()).sft
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_tiny_model(Path(d) / "tiny")
        sides = {
            "realign": Realign(model_dir, rows, cfg),
            "mlx-lm": MlxLm(model_dir, rows, cfg, Path(d), clear_cache=0),
            "mlx-lm keep": MlxLm(model_dir, rows, cfg, Path(d), clear_cache=1 << 40),
        }
        params = {name: trainable(side.model) for name, side in sides.items()}
        blocks = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, side in sides.items():
                blocks[name].append(side.run_block())
    if len(set(params.values())) != 1:
        print(f"warning: the sides train different numbers of parameters: {params}")
    res = {name: summarize(b) for name, b in blocks.items() if sum(x["steps"] for x in b)}
    if len(res) < len(sides):
        reason = "a side had no timed step (each compiled a new shape or was a block's last); raise --steps"
        print(f"not measured: {reason}")
        print("RESULT " + json.dumps({"bench": "sft_vs_mlx_lm", "measured": None, "reason": reason}))
        return
    print(
        f"LoRA SFT, tiny model, demo SFT rows ({len(rows)}), batch {args.batch}, rank {args.rank}, "
        f"scale {args.scale:g}, layers {args.layers}, max_seq_len {args.max_seq_len}, "
        f"{params['realign']:,} trainable parameters; "
        f"{args.rounds} interleaved blocks of {args.steps} steps per side, medians over blocks"
    )
    print(
        f"{'':12} {'steps/s':>8} {'tokens/s':>9} {'own-count':>10} {'tok/step':>9} {'width':>6} {'own clock':>10} "
        f"{'timed':>6}"
    )
    for name, r in res.items():
        print(
            f"{name:12} {r['steps_per_s']:8.2f} {r['common_per_s']:9.0f} {r['counted_per_s']:10.0f} "
            f"{r['common_per_step']:9.1f} {r['width']:6.1f} {r['own_steps_per_s']:8.2f}/s {r['timed']:6d}"
        )
    print(
        "tokens/s, tok/step: answer+stop tokens; own-count: tokens/s by each loss's own mask; width: mean padded\n"
        "input length; own clock: the loop's own per-step timer; keep: clear_cache_threshold 1 TB, not its default 0"
    )
    ours = res["realign"]
    base_name = max(("mlx-lm", "mlx-lm keep"), key=lambda n: res[n]["steps_per_s"])
    base = res[base_name]
    ratio = ours["steps_per_s"] / base["steps_per_s"]
    tok_ratio = ours["common_per_s"] / base["common_per_s"]
    own_ratio = ours["own_steps_per_s"] / base["own_steps_per_s"]
    print(f"realign / {base_name} (the faster mlx-lm): steps/s {ratio:.2f}x (target >= 1.0), ", end="")
    print(f"answer+stop tokens/s {tok_ratio:.2f}x, by each loop's own clock {own_ratio:.2f}x")
    result = {
        "bench": "sft_vs_mlx_lm",
        "metric": "LoRA SFT steps/s, realign vs mlx-lm trainer",
        "measured": ours["steps_per_s"],
        "baseline": base["steps_per_s"],
        "ratio": ratio,
        "target": 1.0,
        "baseline_side": base_name,
        "tokens_per_s": {name: r["common_per_s"] for name, r in res.items()},
        "tokens_ratio": tok_ratio,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
