"""Fan-out over real work pools: a local Prefect server on 127.0.0.1, two process workers (one slowed
to half speed by REALIGN_SHARD_SLOWDOWN), the shard deployments from prefect.yaml, and the owning
side (tasks.shards.run_shards) in its own process, as a stage would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from realign.cli.server import LocalPrefect

OWNER = r"""
import json, sys
import realign
from prefect import flow
from realign.score.sampling import PairsConfig
from tasks.shards import run_shards

model_dir, shard_dir, given = sys.argv[1], sys.argv[2], sys.argv[3] == "given"
prompts = [f"Reverse: {1000 + i}" for i in range(60)]
answers = [str(1000 + i)[::-1] for i in range(60)]
cfg = PairsConfig.model_validate({"generation": {"n": 2, "batch_size": 8, "max_tokens": 6},
                                  "sharding": {"pools": ["m4-max", "m3-ultra"], "poll_s": 0.5, "timeout_s": 400,
                                               "throughput": {"m4-max": 2.0, "m3-ultra": 1.0} if given else {}}})

@flow(name="owner")
def owner():
    scored, records = run_shards(prompts, answers, model_dir, cfg, 0, shard_dir)
    return {"texts": scored.texts, "scores": scored.scores, "records": records}

print("RESULT " + json.dumps(owner()))
"""


@pytest.mark.slow
def test_every_row_comes_back_exactly_once_from_two_workers(tmp_path, tiny_model_dir):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with LocalPrefect(tmp_path / "prefect", REPO, poll_s=1) as stack:
        stack.start_server()
        stack.create_pools(["m4-max", "m3-ultra"])
        out = stack.deploy(["shard-m4-max", "shard-m3-ultra"])
        assert "shard/shard-m4-max" in out and "shard/shard-m3-ultra" in out, out
        stack.start_worker("m4-max")
        # a worker whose own environment says otherwise: the shard runs with what the owning stage sends
        stack.start_worker("m3-ultra", REALIGN_SHARD_SLOWDOWN="2", MLX_METAL_PREALLOCATE="0")

        def fan_out(throughput: str, shard_dir: str) -> dict:
            done = subprocess.run(
                [sys.executable, "-c", OWNER, str(tiny_model_dir), str(tmp_path / shard_dir), throughput],
                cwd=REPO,
                env=stack.env(),
                capture_output=True,
                text=True,
                timeout=500,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            return json.loads(done.stdout.split("RESULT ", 1)[1])

        result = fan_out("given", "shards")
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            with get_client(sync_client=True) as client:
                runs = {r.name: r for r in client.read_flow_runs() if r.name.startswith("shard-")}
                measured = {
                    p: client.read_variable_by_name(f"shard_throughput_{p.replace('-', '_')}").value
                    for p in ("m4-max", "m3-ultra")
                }
        # Without figures in the recipe, the next fan-out splits by what each pool measured just now.
        again = fan_out("none", "shards-again")
    # 60 rows split 2:1 by throughput, each shard run by the worker of its pool
    assert {r["shard"]: r["rows"] for r in result["records"]} == {"m4-max": 40, "m3-ultra": 20}
    assert set(runs) == {"shard-m4-max", "shard-m3-ultra"}
    assert all(r.state.is_completed() for r in runs.values())
    assert {name: r.work_pool_name for name, r in runs.items()} == {
        "shard-m4-max": "m4-max",
        "shard-m3-ultra": "m3-ultra",
    }
    # every row once, in input order, with its own n samples and scores
    assert len(result["texts"]) == 60 and all(len(t) == 2 for t in result["texts"])
    import pandas as pd

    fast = pd.read_parquet(tmp_path / "shards" / "output-m4-max.parquet")
    slow = pd.read_parquet(tmp_path / "shards" / "output-m3-ultra.parquet")
    assert fast["row_id"].tolist() == list(range(40)) and slow["row_id"].tolist() == list(range(40, 60))
    assert [list(t) for t in slow["texts"]] == result["texts"][40:]
    # the slowdown is the worker's configuration, applied by the shard that ran there: the slowed shard slept as
    # long as it computed (2x), so its measured rate is half what it computed at. Its rate against the other
    # shard's is not asserted: two processes share 2 cores here, so each one's compute speed depends on when the
    # other ran (a CI run measured the slowed one faster); the ratio is bench/shards.py's job.
    assert {r["shard"]: r["slowdown"] for r in result["records"]} == {"m4-max": 1.0, "m3-ultra": 2.0}
    by_pool = {r["shard"]: r for r in result["records"]}
    assert by_pool["m4-max"]["slowdown_seconds"] == 0.0
    slow_rec = by_pool["m3-ultra"]
    computed = slow_rec["sampling_seconds"] - slow_rec["slowdown_seconds"]
    # asleep for (2 - 1) x the compute time up to the last batch's progress report, i.e. nearly all of it (a loaded
    # machine may oversleep a little)
    assert 0.5 * computed <= slow_rec["slowdown_seconds"] <= 1.5 * computed, slow_rec
    for r in result["records"]:  # SPEC.md's MLX environment, in each worker's shard process
        assert r["environment"]["MLX_METAL_PREALLOCATE"] == "1", r
        assert r["environment"]["MLX_METAL_FAST_SYNCH"] == "1" and r["environment"]["TOKENIZERS_PARALLELISM"] == "false"
    rate = {r["shard"]: r["measured_examples_per_s"] for r in result["records"]}
    assert {p: v["examples_per_s"] for p, v in measured.items()} == pytest.approx(rate)
    assert measured["m4-max"]["model_dir"] == str(tiny_model_dir) and measured["m4-max"]["n"] == 2
    from hardware.shards import plan_shards

    assert {r["shard"]: r["planned_from"] for r in again["records"]} == {p: "measured by its last shard" for p in rate}
    assert {r["shard"]: r["rows"] for r in again["records"]} == plan_shards(
        60, {p: measured[p]["examples_per_s"] for p in rate}
    )
    assert again["texts"] and len(again["texts"]) == 60
