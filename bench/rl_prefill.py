"""The RL loop's sampling: G completions per prompt from one shared prompt prefill vs G separate prefills.

Tiny model; `--prompts` prompts per round, each a passage of `--context` words followed by a question (RL prompts
with a context, as grounded or code tasks have), `--group` completions each (GRPO's G), `--max-tokens` new tokens,
sampled at temperature 1 with the same seed on both sides; one `realign.model.generate.generate` call per side per
round, batch_size = prompts x G:
  shared    shared_prefill=True: each prompt's KV cache (all but its last token) is computed once and starts
            each of its G completions (measured);
  separate  shared_prefill=False: mlx-lm prefills all prompts x G rows (baseline).
Interleaved rounds after one warm-up call of each; medians of the calls' wall seconds. The ratio is separate /
shared seconds (speed-up). Both sides' completions are compared token for token (they should be identical: same
draws, and a prefill of one row is the same computation as that row in a batch without padding).

    python bench/rl_prefill.py [--prompts 4 --group 8 --context 120 --max-tokens 16 --rounds 5]
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
from realign.model.generate import GenerationConfig, generate, prompt_tokens  # noqa: E402
from realign.model.load import load_model  # noqa: E402
from realign.model.tiny import build_tiny_model  # noqa: E402

WORDS = "the model reads a passage and answers a question about it citing the sentence it used".split()


def prompt(i: int, words: int) -> str:
    passage = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))
    return f"Passage: {passage}\nQuestion {i}: which word comes first? Reverse: {1000 + 37 * i}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4, help="prompts per call")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--context", type=int, default=120, help="passage words per prompt")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        lm = load_model(build_tiny_model(Path(d) / "tiny"))
        rounds = [[prompt(r * args.prompts + i, args.context) for i in range(args.prompts)] for r in range(args.rounds)]
        lengths = [len(prompt_tokens(lm.tokenizer, p)) for ps in rounds for p in ps]

        def call(prompts: list[str], shared: bool) -> tuple[float, list]:
            cfg = GenerationConfig(
                n=args.group,
                batch_size=args.prompts * args.group,
                temperature=1.0,
                max_tokens=args.max_tokens,
                seed=7,
                shared_prefill=shared,
            )
            t = time.perf_counter()
            out = generate(lm.model, lm.tokenizer, prompts, cfg)
            return time.perf_counter() - t, [[c.tokens for c in group] for group in out]

        call(rounds[0], True), call(rounds[0], False)  # warm-up
        secs = {True: [], False: []}
        same = total = 0
        for prompts in rounds:
            (a, ta), (b, tb) = call(prompts, True), call(prompts, False)
            secs[True].append(a)
            secs[False].append(b)
            same += sum(x == y for ga, gb in zip(ta, tb) for x, y in zip(ga, gb))
            total += sum(len(g) for g in ta)
    shared, separate = statistics.median(secs[True]), statistics.median(secs[False])
    ratio = separate / shared
    print(
        f"RL sampling, tiny model: {args.prompts} prompts x G={args.group}, prompts of "
        f"{min(lengths)}-{max(lengths)} tokens, {args.max_tokens} new tokens, medians of {args.rounds} rounds"
    )
    print(f"shared prefill    : {shared:7.3f} s per call")
    print(f"separate prefills : {separate:7.3f} s per call")
    print(f"speed-up          : {ratio:7.2f}x  (separate / shared)")
    print(f"identical completions: {same} of {total}")
    result = {
        "bench": "rl_prefill",
        "metric": f"RL sampling calls/s, shared vs separate prompt prefill (G={args.group})",
        "measured": 1 / shared,
        "baseline": 1 / separate,
        "ratio": ratio,
        "target": 1.0,
        "identical": same,
        "completions": total,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
