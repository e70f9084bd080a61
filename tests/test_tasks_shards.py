"""The owning side of a sharded stage without a server: in-process shards, the exactly-once merge,
throughput lookup, and a clear error for a pool with no deployment."""

from __future__ import annotations

import pandas as pd
import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from hardware.shards import ShardMismatch
from realign.score.sampling import PairsConfig, ShardingConfig
from tasks.shards import ShardFailed, pool_throughput, run_shards

PROMPTS = [f"Reverse: {100 + i}" for i in range(12)]
ANSWERS = [str(100 + i)[::-1] for i in range(12)]
CFG = PairsConfig.model_validate({"generation": {"n": 2, "batch_size": 8, "max_tokens": 5}})


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@flow
def owner(model_dir: str, shard_dir: str, cfg: PairsConfig = CFG):
    return run_shards(PROMPTS, ANSWERS, model_dir, cfg, 5, shard_dir)


def test_no_pools_runs_one_local_shard_with_the_stage_seed(tiny_model_dir, tmp_path):
    from realign.model.load import load_model
    from realign.score.sampling import sample_and_score

    scored, records = owner(str(tiny_model_dir), str(tmp_path))
    assert [r["shard"] for r in records] == ["local"] and records[0]["rows"] == 12
    # same samples as sampling everything at once with the stage's seed (sharding changed nothing here)
    direct = sample_and_score(load_model(str(tiny_model_dir)), PROMPTS, ANSWERS, CFG, 5)
    assert scored.texts == direct.texts and scored.scores == direct.scores and scored.second == direct.second
    assert (tmp_path / "output-local.parquet").exists() and (tmp_path / "shards.json").exists()


def test_a_shared_results_path_gets_one_subfolder_per_run_and_round(tiny_model_dir, tmp_path):
    shared = tmp_path / "shared"
    cfg = CFG.model_copy(update={"sharding": ShardingConfig(results_path=str(shared))})
    owner(str(tiny_model_dir), str(tmp_path / "run-a" / "02_preference_data_round2" / "shards"), cfg)
    assert (shared / "run-a__02_preference_data_round2" / "output-local.parquet").exists()


def test_a_shard_that_returns_a_row_twice_fails_the_merge_naming_it(tiny_model_dir, tmp_path, monkeypatch):
    import tasks.shards as shards

    def bad_shard(job, on_progress=None):
        frame = pd.read_parquet(job.inputs_path)
        frame = pd.concat([frame, frame.iloc[:1]])  # row 0 twice
        pd.DataFrame(
            {
                "row_id": frame["row_id"],
                "prompt": frame["prompt"],
                "texts": [["x"]] * len(frame),
                "scores": [[0.0]] * len(frame),
                "second": [[0.0]] * len(frame),
            }
        ).to_parquet(job.output_path)

    monkeypatch.setattr(shards, "run_shard", bad_shard)
    with pytest.raises(ShardMismatch, match=r"shard local: 0 missing .* 1 duplicated \(e.g. \[0\]\)"):
        owner(str(tiny_model_dir), str(tmp_path))


def test_a_pool_without_a_deployment_is_named(tiny_model_dir, tmp_path):
    cfg = CFG.model_copy(update={"sharding": ShardingConfig(pools=["m4-max"], throughput={"m4-max": 1.0})})
    with pytest.raises(ShardFailed, match=r"deployment 'shard/shard-m4-max' not found for pool 'm4-max'"):
        owner(str(tiny_model_dir), str(tmp_path), cfg)


def test_throughput_from_the_recipe_else_the_last_measurement_else_the_machine_profile():
    cfg = ShardingConfig(pools=["m4-max", "m3-ultra"], throughput={"m3-ultra": 1.5})
    tp, source = pool_throughput(cfg)
    assert tp == {"m4-max": 3.86, "m3-ultra": 1.5}  # 3.86: the M4 Max profile's scoring rate from the seeds
    assert source["m3-ultra"] == "recipe" and source["m4-max"].startswith("profile m4-max")
    tp, source = pool_throughput(cfg, measured={"m4-max": 7.25, "m3-ultra": 9.0})
    assert tp == {"m4-max": 7.25, "m3-ultra": 1.5}  # the recipe still wins over a measurement
    assert source["m4-max"] == "measured by its last shard"
    with pytest.raises(ValueError, match=r"no throughput for work pool 'lab-pc'.*pairs.sharding.throughput.lab-pc"):
        pool_throughput(ShardingConfig(pools=["lab-pc"]))
    assert pool_throughput(ShardingConfig(pools=["lab-pc"]), measured={"lab-pc": 2.0})[0] == {"lab-pc": 2.0}


def test_sharding_config_rejects_duplicate_pools_and_templates_without_pool():
    with pytest.raises(ValueError, match="more than once"):
        ShardingConfig(pools=["m4-max", "m4-max"])
    with pytest.raises(ValueError, match=r"must contain \{pool\}"):
        ShardingConfig(deployment="shard/shard")
