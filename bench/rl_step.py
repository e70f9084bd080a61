"""Throughput of an RL (GRPO) step on the tiny model at two group sizes, measured in this run.

A step samples G completions for each of B prompts (batched generation), scores them with the verifier, and
updates the policy once. Prints samples/s and completion tokens/s per group size, the sampling share of the step
time, and the larger group against the smaller one as the in-run baseline.

    python bench/rl_step.py [--prompts 8 --groups 4 8 --steps 8]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import realign  # noqa: E402,F401
from realign.data.demo import splits  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402
from realign.score.verifiers import Verifier  # noqa: E402
from realign.train.loop import TrainConfig, prepare_model  # noqa: E402
from realign.train.rl import RLConfig, rl_train  # noqa: E402


def run(model_dir, answers: dict, prompts: int, group: int, steps: int) -> dict:
    lm, ref = load_model(model_dir), load_model(model_dir)
    cfg = RLConfig(
        num_generations=group,
        max_completion_length=10,
        train=TrainConfig(steps=steps, batch_size=prompts, learning_rate=1e-5, lora=None),
    )
    prepare_model(lm.model, cfg.train)
    hist = rl_train(
        lm.model, lm.tokenizer, list(answers), Verifier(answers, mode="graded").score, cfg, reference=ref.model
    ).history
    timed = hist[2:]  # the first steps compile the update for new shapes
    seconds = sum(h["seconds"] for h in timed)
    return {
        "samples_per_s": sum(h["samples"] for h in timed) / seconds,
        "tokens_per_s": sum(h["tokens"] for h in timed) / seconds,
        "sampling_share": sum(h["sampling_seconds"] for h in timed) / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--groups", type=int, nargs=2, default=[4, 8], help="two group sizes G")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    if args.steps < 3:
        ap.error("--steps must be >= 3 (the first two steps compile the update and are not timed)")
    rows, _ = splits("reverse", 256, 1, seed=0)
    answers = {e.prompt: e.answer for e in rows}
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_tiny_model(Path(d) / "tiny")
        results = {g: run(model_dir, answers, args.prompts, g, args.steps) for g in args.groups}
    print(f"GRPO step, {args.prompts} prompts x G completions (full fine-tuning, tiny model), steps 3-{args.steps}")
    print(f"{'G':>4} {'samples/s':>10} {'tokens/s':>10} {'sampling share':>15}")
    for g, r in results.items():
        print(f"{g:>4} {r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} {r['sampling_share']:>15.0%}")
    small, large = (results[g] for g in args.groups)
    print(f"G={args.groups[1]} / G={args.groups[0]} samples/s: {large['samples_per_s'] / small['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
