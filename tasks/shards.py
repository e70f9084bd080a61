"""The owning side of a sharded stage: plan, fan out to the work pools at once, wait, merge.

Each pool gets a share proportional to its measured throughput (hardware.shards.plan_shards);
every shard runs as the `shard` flow's deployment for that pool (flows/shard.py) on the machine
whose worker serves the pool. With no pools configured the one shard runs in this process.
The merge checks that every input row came back exactly once, or fails naming the shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from hardware.config import HardwareConfig
from hardware.shards import ShardMismatch, assign_rows, merge_shards, plan_shards
from realign.io import write_json, write_parquet
from realign.score.sampling import PairsConfig, ScoredSamples, ShardingConfig, ShardJob, measurement_key, run_shard


class ShardFailed(RuntimeError):
    """A shard's flow run ended without completing, or did not finish in time; the message names it."""


def pool_throughput(
    cfg: ShardingConfig, measured: dict[str, float] | None = None, hw: HardwareConfig | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Examples/s per pool and where each figure came from: the recipe's, else what the pool's last shard
    of the same job shape measured (`measured`), else the hardware profile serving that pool."""
    hw = hw or HardwareConfig()
    measured = measured or {}
    out, source = {}, {}
    for pool in cfg.pools:
        if pool in cfg.throughput:
            out[pool], source[pool] = cfg.throughput[pool], "recipe"
        elif measured.get(pool):
            out[pool], source[pool] = measured[pool], "measured by its last shard"
        else:
            prof = next((m for m in hw.machines if m.work_pool == pool), None)
            if prof is None or not prof.scoring_examples_per_s:
                raise ValueError(
                    f"no throughput for work pool {pool!r}: run a shard there once, or set "
                    f"pairs.sharding.throughput.{pool} in the recipe (examples/s)"
                )
            out[pool], source[pool] = (
                prof.scoring_examples_per_s,
                f"profile {prof.name} (the seeds' figure, not measured here)",
            )
    return out, source


def throughput_variable(pool: str) -> str:
    """Name of the Prefect Variable holding a pool's last measured shard throughput (written by flows/shard.py)."""
    return "shard_throughput_" + pool.replace("-", "_")


def last_measured(pools: list[str], key: dict) -> dict[str, float]:
    """Rows/s each pool's last shard measured for a job of the same shape (realign.score.sampling.measurement_key)."""
    from prefect.variables import Variable

    out = {}
    for pool in pools:
        value = Variable.get(throughput_variable(pool), default=None)
        if isinstance(value, dict) and all(value.get(k) == v for k, v in key.items()) and value.get("examples_per_s"):
            out[pool] = float(value["examples_per_s"])
    return out


def _wait(runs: dict, cfg: ShardingConfig, log) -> None:
    """Poll the shards' flow runs until all are final; raise ShardFailed naming any that did not complete."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + cfg.timeout_s
    pending, failed, last_report = dict(runs), [], 0.0
    with get_client(sync_client=True) as client:
        while pending:
            for pool, run_id in list(pending.items()):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    del pending[pool]
                    if state.is_completed():
                        log.info(f"shard {pool}: {state.name}")
                    else:
                        failed.append(
                            f"shard {pool} (flow run {run_id}) ended {state.name}: {state.message or 'no message'}"
                        )
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ShardFailed(
                    f"shards not back after {cfg.timeout_s:.0f}s: {sorted(pending)} (is a worker serving each pool? "
                    f"`prefect worker start --pool POOL` on its machine)"
                )
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                log.info(f"waiting for shards {sorted(pending)}")
            time.sleep(cfg.poll_s)
    if failed:
        raise ShardFailed("; ".join(failed) + ". Retry the run: completed shards are redone with it.")


def run_shards(
    prompts: Sequence[str],
    answers: Sequence[str | None],
    model_dir: str,
    pairs_cfg: PairsConfig,
    seed: int,
    shard_dir: str | Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[ScoredSamples, list[dict]]:
    """Sample and score `prompts` over the configured pools (or in-process); return them in input order
    plus one record per shard (rows, seconds, measured examples/s)."""
    log = get_run_logger()
    cfg = pairs_cfg.sharding
    shard_dir = Path(shard_dir)
    if cfg.results_path:
        # A shared folder serves many runs: one subfolder per run and round (RUN_NAME__02_preference_data_round2).
        shard_dir = Path(cfg.results_path) / f"{shard_dir.parent.parent.name}__{shard_dir.parent.name}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    row_ids = list(range(len(prompts)))
    if cfg.pools:
        throughput, source = pool_throughput(cfg, last_measured(cfg.pools, measurement_key(model_dir, pairs_cfg)))
    else:
        throughput, source = {"local": 1.0}, {"local": "in-process"}
    counts = plan_shards(len(row_ids), throughput)
    assigned = assign_rows(row_ids, counts)
    jobs = {}
    for i, (pool, rows) in enumerate(assigned.items()):
        if not rows:
            log.info(f"shard {pool}: nothing to do (throughput {throughput[pool]})")
            continue
        inputs = shard_dir / f"input-{pool}.parquet"
        frame = pd.DataFrame(
            {"row_id": rows, "prompt": [prompts[r] for r in rows], "answer": [answers[r] for r in rows]}
        )
        write_parquet(inputs, frame)
        out = shard_dir / f"output-{pool}.parquet"
        out.with_suffix(".json").unlink(missing_ok=True)
        out.unlink(missing_ok=True)  # a leftover from an earlier attempt must not pass as this one's
        # One shard keeps the stage's seed (same samples as before sharding existed); several get distinct streams.
        jobs[pool] = ShardJob(
            job=str(shard_dir),
            shard=pool,
            model_dir=model_dir,
            inputs_path=str(inputs),
            output_path=str(out),
            pairs=pairs_cfg,
            seed=seed if len(assigned) == 1 else seed + 7919 * (i + 1),
        )

    t0 = time.perf_counter()
    if cfg.pools:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        log.info(
            "fanning out: "
            + ", ".join(f"{p}={len(assigned[p])} rows at {throughput[p]:.3g} ex/s ({source[p]})" for p in assigned)
        )
        runs = {}
        for pool, job in jobs.items():
            name = cfg.deployment.format(pool=pool)
            try:
                run = run_deployment(
                    name=name,
                    parameters={"job": job.model_dump(mode="json")},
                    # the MLX environment of SPEC.md's hardware rules, in the worker's process for this shard
                    job_variables={"env": dict(HardwareConfig().environment)},
                    timeout=0,
                    flow_run_name=f"shard-{pool}",
                    tags=["realign-shard"],
                )
            except ObjectNotFound as exc:
                raise ShardFailed(
                    f"deployment {name!r} not found for pool {pool!r}: deploy it (`make pools` then "
                    f"`prefect --no-prompt deploy --all`, or `realign server`)"
                ) from exc
            runs[pool] = run.id
        _wait(runs, cfg, log)
    else:
        for pool, job in jobs.items():
            run_shard(job, on_progress=on_progress)

    frames, returned, records = {}, {}, []
    for pool, job in jobs.items():
        path = Path(job.output_path)
        if not path.exists():
            raise ShardMismatch(
                f"shard {pool}: no output at {path} ({len(assigned[pool])} rows assigned). Re-run the failed shard(s)."
            )
        frames[pool] = pd.read_parquet(path)
        returned[pool] = frames[pool]["row_id"].tolist()
    merge_shards({p: assigned[p] for p in jobs}, returned)
    wall = time.perf_counter() - t0
    by_row = pd.concat(frames.values()).set_index("row_id").loc[row_ids]
    for pool, rows in assigned.items():
        rec = {
            "shard": pool,
            "rows": len(rows),
            "planned_examples_per_s": throughput[pool],
            "planned_from": source[pool],
            "measured_examples_per_s": None,
            "output": jobs[pool].output_path if pool in jobs else None,
        }
        info_path = Path(jobs[pool].output_path).with_suffix(".json") if pool in jobs else None
        if info_path is not None and info_path.exists():
            info = json.loads(info_path.read_text())
            rec["measured_examples_per_s"] = info.get("examples_per_s")
            rec["slowdown"] = info.get("slowdown")
            rec["slowdown_seconds"] = info.get("slowdown_seconds")
            rec["sampling_seconds"] = info.get("sampling_seconds")
            rec["environment"] = info.get("environment")
        records.append(rec)
    if cfg.pools:
        log.info(
            "shards back: "
            + ", ".join(
                f"{r['shard']} {r['rows']} rows at {r['measured_examples_per_s'] or 0:.2f} ex/s "
                f"(planned {r['planned_examples_per_s']:g})"
                for r in records
            )
        )
    write_json(shard_dir / "shards.json", {"wall_seconds": wall, "shards": records})
    second = None if by_row["second"].isna().all() else [list(x) for x in by_row["second"]]
    return ScoredSamples(
        [list(x) for x in by_row["texts"]], [list(map(float, x)) for x in by_row["scores"]], second
    ), records
