"""A distributed training stage as one Prefect task that owns the `mlx.launch` of every rank (and the same for
generation or scoring with a model sharded over the ranks: `sharded_inference`).

The task writes the job (realign.train.distributed_job.DistributedJob) into the stage directory, launches it on
the recipe's hosts (DistributedConfig), forwards each rank's lines to the run log as they arrive (rank 0's step
rows as progress lines), and fails with the rank and host of a rank that died. Checkpoints live in the job's
out_dir, so a retry (Prefect's, or a rerun of the stage) resumes from the last one written: same world size, same
job, bit-identical continuation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from hardware.config import HardwareConfig
from realign.model.sharded import ShardedJob
from realign.train.distributed_job import DistributedConfig, DistributedJob, RankFailed, hostfile_hosts, launch

JOB_MODULE = "realign.train.distributed_job"
SHARDED_MODULE = "realign.model.sharded"


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow run (tests, scripts)
        return logging.getLogger("realign.distributed")


def step_line(row: dict) -> str:
    """A rank-0 step row as one progress line: loss, step time, the slowest rank's wait and the all_sum time."""
    waits = [v for k, v in row.items() if k.startswith("wait_s/rank")]
    return (
        f"step {row['step']}: loss {row.get('loss', float('nan')):.4f}, {row['seconds']:.2f} s "
        f"(all_sum {row.get('comm_s', 0.0):.3f} s, longest wait {max(waits, default=0.0):.3f} s, "
        f"{row.get('ranks', 1)} ranks)"
    )


def rank_shares(cfg: DistributedConfig, hw: HardwareConfig | None = None) -> list[float] | None:
    """Each rank's share of a global batch: the recipe's `shares`, else its machine's calibrated throughput (the
    profiles the shard planner reads; peak training examples/s) split over that machine's ranks, else None (even).

    mlx.launch numbers ranks host by host (host 0's ranks first), so shares follow the hosts' order.
    """
    if cfg.shares is not None:
        return list(cfg.shares)
    if not cfg.machines:
        return None
    hosts, per_host = max(1, len(cfg.hosts)), cfg.ranks_per_host
    if cfg.hostfile:  # one rank per hostfile entry (mlx.launch ignores -n with a hostfile)
        hosts, per_host = len(hostfile_hosts(cfg.hostfile)), 1
    if len(cfg.machines) != hosts:
        raise ValueError(f"distributed.machines names {len(cfg.machines)} machines for {hosts} hosts")
    hw = hw or HardwareConfig()
    return [hw.machine(m).peak_examples_per_s / per_host for m in cfg.machines for _ in range(per_host)]


def run_distributed_training(job: DistributedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """Launch `job` on the ranks `cfg` names and return rank 0's result.json (history, steps, rank divergence).

    A job without shares gets the ranks' shares from `cfg` (rank_shares). Raises RankFailed naming the rank and
    host that failed (its last lines in the message).
    """
    log = _logger()
    if job.shares is None:
        job = job.model_copy(update={"shares": rank_shares(cfg)})
        if job.shares is not None:
            log.info(f"ranks' shares of each global batch: {', '.join(f'{s:g}' for s in job.shares)}")
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / "job.json"
    job_path.write_text(job.model_dump_json(indent=1))

    def forward(line: str) -> None:
        if line.startswith('{"rank": '):
            try:
                row = json.loads(line)
            except ValueError:
                log.info(line)
                return
            log.info(step_line(row))
        elif line.strip():
            log.info(line)

    try:
        launch(cfg, ["-m", JOB_MODULE, str(job_path)], on_line=forward, timeout=timeout)
    except RankFailed as exc:
        log.error(str(exc).splitlines()[0] + " A retry resumes from the last checkpoint in " + str(out / "checkpoints"))
        raise
    return json.loads((out / "result.json").read_text())


@task(name="distributed-training", retries=1, retry_delay_seconds=5)
def train_distributed(job: DistributedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """The Prefect task: one launch of all ranks; a failed rank fails it (named), a retry resumes."""
    return run_distributed_training(job, cfg, timeout)


def run_sharded_inference(job: ShardedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """Generate or score with the model split over the ranks `cfg` names (realign.model.sharded); rank 0's output.

    Raises RankFailed naming the rank and host that failed.
    """
    log = _logger()
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    job_path = out.with_suffix(".job.json")
    job_path.write_text(job.model_dump_json(indent=1))
    launch(
        cfg,
        ["-m", SHARDED_MODULE, str(job_path)],
        on_line=lambda line: line.strip() and log.info(line),
        timeout=timeout,
    )
    return json.loads(out.read_text())


@task(name="sharded-inference", retries=1, retry_delay_seconds=5)
def sharded_inference(job: ShardedJob, cfg: DistributedConfig, timeout: float | None = None) -> dict:
    """The Prefect task: one launch of all ranks holding one model between them; a failed rank fails it (named)."""
    return run_sharded_inference(job, cfg, timeout)
