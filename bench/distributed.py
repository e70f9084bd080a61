"""Step time of data-parallel SFT on 1 and 2 local ranks, and the communication share of the 2-rank step.

Both sides train the tiny model (full fine-tuning) on the demo's SFT rows with the same global batch, through the
same job runner (realign.train.distributed_job): 1 rank is the ordinary single-process loop, 2 ranks run under
`mlx.launch` (ring backend on 127.0.0.1), each computing half of every global batch and summing gradients with
one all_sum per step. Medians over the steps after the first `--warmup` (which include mx.compile's tracing of
new batch shapes). The 2-rank row also gives, per step, the time in the gradient all_sum (comm) and the time each
rank waited for the slower one (wait): communication share = (comm + mean wait) / step.

Both ranks run on this one machine and share its cores (each rank's OpenBLAS gets half of them,
REALIGN_BLAS_THREADS, so they do not oversubscribe), so 2 ranks are not expected to be faster here: the numbers
measure the overhead of the distributed step, not the speedup of two machines.

    python bench/distributed.py [--steps 20] [--batch-size 16]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import realign  # noqa: E402, F401  (the fast BLAS before mlx)
from realign.data.datasets import DataConfig, load_data  # noqa: E402
from realign.model.tiny import TinyModelConfig, build_tiny_model  # noqa: E402
from realign.train.distributed_job import DistributedConfig, DistributedJob, launch  # noqa: E402
from realign.train.loop import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16, help="global batch (examples per optimizer step)")
    ap.add_argument("--warmup", type=int, default=4, help="first steps left out of the medians")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny", TinyModelConfig(seed=0))
        rows = load_data(DataConfig()).sft[:256]
        (work / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
        train = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=1e-4,
            lora=None,
            max_seq_len=64,
            metrics_every=10**6,
        )
        results = {}
        for ranks in (1, 2):
            job = DistributedJob(
                kind="sft",
                model=str(model),
                data=str(work / "sft.jsonl"),
                out_dir=str(work / f"out{ranks}"),
                train=train,
            )
            path = work / f"job{ranks}.json"
            path.write_text(job.model_dump_json())
            cmd = ["-m", "realign.train.distributed_job", str(path)]
            if ranks == 1:
                subprocess.run([sys.executable, *cmd], check=True, capture_output=True, timeout=1200)
            else:
                threads = str(max(1, (os.cpu_count() or 2) // 2))
                launch(
                    DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=2),
                    cmd,
                    timeout=1200,
                    env={"REALIGN_BLAS_THREADS": threads},
                )
            history = json.loads((work / f"out{ranks}" / "result.json").read_text())["history"][args.warmup :]
            row = {"step_s": statistics.median(r["seconds"] for r in history)}
            if ranks > 1:
                comm = statistics.median(r["comm_s"] for r in history)
                wait = statistics.median(statistics.mean(r[f"wait_s/rank{k}"] for k in range(ranks)) for r in history)
                row.update({"comm_s": comm, "wait_s": wait, "comm_share": (comm + wait) / row["step_s"]})
            results[ranks] = row
    one, two = results[1], results[2]
    print(f"global batch {args.batch_size}, {args.steps} steps (median of the last {args.steps - args.warmup})")
    print(f"1 rank : {one['step_s'] * 1000:8.1f} ms/step")
    print(
        f"2 ranks: {two['step_s'] * 1000:8.1f} ms/step  (all_sum {two['comm_s'] * 1000:.1f} ms, "
        f"wait {two['wait_s'] * 1000:.1f} ms: communication share {two['comm_share']:.1%})"
    )
    print(f"2 ranks / 1 rank step time: {two['step_s'] / one['step_s']:.2f}x (both ranks share this machine's cores)")
    print("RESULT " + json.dumps({"bench": "distributed", "one_rank": one, "two_ranks": two}))


if __name__ == "__main__":
    main()
