"""Batched vs one-at-a-time generation on the tiny model, measured in this run.

python bench/generation.py [--prompts 128 --batch 32 --max-tokens 48]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import realign  # noqa: E402,F401
from realign.model.generate import GenerationConfig, generate  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402


def tokens_per_s(lm, prompts, batch: int, max_tokens: int) -> tuple[float, int]:
    cfg = GenerationConfig(batch_size=batch, max_tokens=max_tokens, temperature=1.0, seed=0)
    generate(lm.model, lm.tokenizer, prompts[:batch], cfg)  # warm-up at this batch size
    start = time.perf_counter()
    out = generate(lm.model, lm.tokenizer, prompts, cfg)
    n = sum(c.n_tokens for per in out for c in per)
    return n / (time.perf_counter() - start), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        lm = load_model(build_tiny_model(Path(d) / "tiny"))
        prompts = [f"Reverse: {i * 7919 % 100000}" for i in range(args.prompts)]
        single, n1 = tokens_per_s(lm, prompts, 1, args.max_tokens)
        batched, nb = tokens_per_s(lm, prompts, args.batch, args.max_tokens)
    print(f"one at a time : {single:8.0f} tokens/s ({n1} tokens)")
    print(f"batch {args.batch:<8}: {batched:8.0f} tokens/s ({nb} tokens)")
    print(f"ratio         : {batched / single:8.1f}x")


if __name__ == "__main__":
    main()
