"""Gate validation of 1,000,000 preference pairs vs the time to generate them, measured in this run.

The generation rate is measured on the tiny model with mlx-lm's batched generation
(2 completions per pair, 32 tokens each, batch 32): the cheapest generation realign
can do. The gate must be a small fraction of it.

    python bench/gates.py [--rows 1000000]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

# `python bench/gates.py` puts bench/ first on sys.path, where this file would shadow the gates package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import realign  # noqa: E402,F401  (fast BLAS before mlx)


def pairs_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    chosen = rng.uniform(0.6, 1.0, n)
    return pd.DataFrame(
        {
            "prompt": [f"What is {i % 997} + {i % 991}?" for i in range(n)],
            "chosen": [f"{i % 997 + i % 991}" for i in range(n)],
            "rejected": [f"{i % 997 + i % 991 + 1}" for i in range(n)],
            "chosen_score": chosen,
            "rejected_score": chosen - rng.uniform(0.1, 0.5, n),
        }
    )


def generation_seconds_per_pair(batch: int = 32, max_tokens: int = 32) -> float:
    import mlx_lm

    from realign.model.load import load_model
    from realign.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as d:
        lm = load_model(build_tiny_model(Path(d) / "tiny"))
        tok = lm.tokenizer
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": f"What is {i} + {2 * i}?"}], add_generation_prompt=True
            )
            for i in range(batch)
        ]
        mlx_lm.batch_generate(lm.model, tok, prompts[:4], max_tokens=4)  # warm-up
        start = time.perf_counter()
        # Two completions per prompt (best and worst of N=2), so `batch` pairs per run.
        for _ in range(2):
            mlx_lm.batch_generate(lm.model, tok, prompts, max_tokens=max_tokens)
        return (time.perf_counter() - start) / batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    from gates.suites.dpo import preference_pairs_suite
    from gates.validate import evaluate
    from realign.thresholds import ThresholdsConfig

    evaluate("warm-up", {preference_pairs_suite: pairs_frame(2000)}, ThresholdsConfig())  # GX import + context setup
    df = pairs_frame(args.rows)
    start = time.perf_counter()
    report = evaluate("2-preference-data", {preference_pairs_suite: df}, ThresholdsConfig())
    gate_s = time.perf_counter() - start
    per_pair = generation_seconds_per_pair()
    gen_s = per_pair * args.rows
    print(f"gate on {args.rows:,} pairs: {gate_s:.2f}s ({args.rows / gate_s:,.0f} rows/s), tier {report.tier}")
    print(
        f"generating pairs (tiny model, batch 32, 2 x 32 tokens): {per_pair * 1e3:.2f} ms/pair "
        f"-> {gen_s:,.0f}s for {args.rows:,}"
    )
    print(f"gate / generation time: {gate_s / gen_s:.5f} ({gen_s / gate_s:,.0f}x faster than generating the data)")


if __name__ == "__main__":
    main()
