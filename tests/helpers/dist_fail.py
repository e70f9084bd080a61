"""A distributed training job whose rank 0 dies right after writing the checkpoint of step N (the resume test).

usage: dist_fail.py JOB.json N
"""

import sys  # noqa: I001  (realign, and its fast BLAS, must be imported before mlx)
from pathlib import Path

import realign.train.loop as loop
from realign.train.distributed_job import DistributedJob, run_job

job_path, fail_at = sys.argv[1], int(sys.argv[2])
save = loop.save_checkpoint


def save_then_die(root, step, *args, **kwargs):
    path = save(root, step, *args, **kwargs)
    if step == fail_at:
        raise SystemExit(f"rank 0 dies after its step-{step} checkpoint (test)")
    return path


loop.save_checkpoint = save_then_die  # train_parallel looks it up on realign.train.loop at call time
run_job(DistributedJob.model_validate_json(Path(job_path).read_text()))
