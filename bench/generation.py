"""realign's batched generation against mlx-lm's `stream_generate` one prompt at a time, measured in this run.

Same tiny model object, same prompts (the demo's preference prompts, chat-templated by realign's `prompt_tokens` and
passed as token ids to both), greedy decoding on both sides (temperature 0: mlx-lm's default argmax sampler; realign's
`make_sampler(temp=0)`), same max tokens. Tokens are the generated ones without the stop token on both sides.

Interleaved rounds: each round takes the next `--batch` prompts and runs, in turn,
  mlx-lm      `mlx_lm.stream_generate` on each of the round's first `--single` prompts, one after another (baseline);
  realign     `realign.model.generate.generate` on all `--batch` prompts at batch_size=`--batch` (measured);
  realign b1  the same at batch_size=1 on the `--single` prompts (informative: realign's path without batching).
Each figure is the median over rounds of tokens/s (generated tokens / wall seconds of the call, prompt processing
included); one warm-up call of each comes first. The ratio is realign / mlx-lm (target >= 8x at batch 32).

    python bench/generation.py [--batch 32 --rounds 5 --single 8 --max-tokens 48]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# realign first: it preloads the fast BLAS, which must happen before anything imports mlx.
import realign  # noqa: E402,F401

# isort: split
import mlx_lm  # noqa: E402

from realign.data.datasets import DataConfig, load_data  # noqa: E402
from realign.model.generate import GenerationConfig, generate, prompt_tokens  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402


def mlx_lm_one_at_a_time(lm, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    """Seconds and generated ids (stop token excluded) of stream_generate run on each prompt in turn."""
    stop = set(lm.tokenizer.eos_token_ids)
    out, start = [], time.perf_counter()
    for ids in prompts:
        # its last response repeats the final token (the stop token when finish_reason is "stop")
        tokens = [r.token for r in mlx_lm.stream_generate(lm.model, lm.tokenizer, ids, max_tokens=max_tokens)]
        out.append([t for t in tokens[:max_tokens] if t not in stop])
    return time.perf_counter() - start, out


def realign_batched(lm, prompts: list[str], batch: int, max_tokens: int) -> tuple[float, list[list[int]]]:
    cfg = GenerationConfig(batch_size=batch, max_tokens=max_tokens, temperature=0.0, seed=0)
    start = time.perf_counter()
    out = generate(lm.model, lm.tokenizer, prompts, cfg)
    return time.perf_counter() - start, [per[0].tokens for per in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32, help="realign's batch size; prompts per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=8, help="prompts per round for the one-at-a-time sides")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    single = min(args.single, args.batch)
    prompts = load_data(DataConfig()).prompts
    need = args.batch * (args.rounds + 1)
    prompts = (prompts * (need // len(prompts) + 1))[:need]  # the demo has 200; repeat if asked for more
    with tempfile.TemporaryDirectory() as d:
        lm = load_model(build_tiny_model(Path(d) / "tiny"))
        ids = [prompt_tokens(lm.tokenizer, p) for p in prompts]
        # warm-up on the extra chunk at the end: first calls pay allocation and graph set-up
        mlx_lm_one_at_a_time(lm, ids[-1:], args.max_tokens)
        realign_batched(lm, prompts[-args.batch :], args.batch, args.max_tokens)
        realign_batched(lm, prompts[-1:], 1, args.max_tokens)
        rates = {"mlx-lm": [], "realign": [], "realign b1": []}
        same = total = 0
        lengths = {"mlx-lm": [], "realign": []}
        for r in range(args.rounds):
            chunk = slice(r * args.batch, (r + 1) * args.batch)
            few = slice(r * args.batch, r * args.batch + single)
            secs, base = mlx_lm_one_at_a_time(lm, ids[few], args.max_tokens)
            rates["mlx-lm"].append(sum(map(len, base)) / secs)
            secs, ours = realign_batched(lm, prompts[chunk], args.batch, args.max_tokens)
            rates["realign"].append(sum(map(len, ours)) / secs)
            secs, b1 = realign_batched(lm, prompts[few], 1, args.max_tokens)
            rates["realign b1"].append(sum(map(len, b1)) / secs)
            lengths["mlx-lm"] += map(len, base)
            lengths["realign"] += map(len, ours)
            same += sum(a == b for a, b in zip(base, ours))  # greedy: batching should not change the answer
            total += single
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["realign"] / med["mlx-lm"]
    print(
        f"greedy generation, tiny model, demo prompts, max {args.max_tokens} new tokens; "
        f"{args.rounds} interleaved rounds, medians of tokens/s"
    )
    print(f"mlx-lm stream_generate, one at a time : {med['mlx-lm']:8.0f} tokens/s")
    print(f"realign generate, batch {args.batch:<4}          : {med['realign']:8.0f} tokens/s")
    print(f"realign generate, batch 1             : {med['realign b1']:8.0f} tokens/s  (informative)")
    print(f"ratio realign batch {args.batch} / mlx-lm       : {ratio:8.1f}x  (target >= 8x)")
    mean = {k: sum(v) / len(v) for k, v in lengths.items()}
    print(f"greedy completions identical to mlx-lm's: {same}/{total}; ", end="")
    print(f"mean new tokens per completion: mlx-lm {mean['mlx-lm']:.1f}, realign {mean['realign']:.1f}")
    result = {
        "bench": "generation",
        "metric": f"greedy tokens/s, realign batch {args.batch} vs mlx-lm one at a time",
        "measured": med["realign"],
        "baseline": med["mlx-lm"],
        "ratio": ratio,
        "target": 8.0,
        "realign_batch1": med["realign b1"],
        "identical": [same, total],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
