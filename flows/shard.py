"""One shard of a sharded stage, run by the worker of the work pool it was planned for.

Deployed once per pool (prefect.yaml: shard-m4-max, shard-m3-ultra); the owning stage
(tasks/shards.py) starts one run per pool, waits for all, and merges their Parquet files.
"""

from __future__ import annotations

import os
import time

from prefect import flow, get_run_logger
from prefect.variables import Variable

from realign.score.sampling import ShardJob, measurement_key, run_shard
from tasks.shards import throughput_variable


def worker_slowdown() -> float:
    """REALIGN_SHARD_SLOWDOWN on the worker: >1 makes this machine act that many times slower (tests, benchmarks)."""
    raw = os.environ.get("REALIGN_SHARD_SLOWDOWN", "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"REALIGN_SHARD_SLOWDOWN={raw!r}: expected a number >= 1 (1 = full speed)") from None
    return value


@flow(name="shard", flow_run_name="shard-{job.shard}", log_prints=True)
def shard(job: ShardJob) -> dict:
    """Sample and score the rows in job.inputs_path; write job.output_path. Returns rows, completions, seconds, ex/s."""
    log = get_run_logger()
    slowdown = worker_slowdown()
    log.info(
        f"shard {job.shard} of {job.job}: {job.inputs_path} -> {job.output_path}"
        + (f" (slowed {slowdown:g}x by REALIGN_SHARD_SLOWDOWN)" if slowdown != 1 else "")
    )

    def progress(done: int, total: int) -> None:
        if done == total or done % (job.pairs.generation.batch_size * 10) == 0:
            log.info(f"generated {done}/{total} answers")

    result = run_shard(job, slowdown=slowdown, on_progress=progress)
    log.info(
        f"shard {job.shard}: {result['rows']} rows, {result['completions']} answers in {result['seconds']:.1f}s "
        f"({result['examples_per_s'] or 0:.2f} rows/s sampling + scoring)"
    )
    if result["examples_per_s"] and result["rows"] >= 8:
        # The next split over this pool uses what it measured here (tasks.shards.pool_throughput).
        Variable.set(
            throughput_variable(job.shard),
            {
                **measurement_key(job.model_dir, job.pairs),
                "examples_per_s": result["examples_per_s"],
                "rows": result["rows"],
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            overwrite=True,
        )
    return result
