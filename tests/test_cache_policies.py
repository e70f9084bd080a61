"""Stage cache keys: user data files by content (only the files a stage reads), earlier outputs and a local base model
by identity, and a stage's own recorded outputs (a cached result is used only while they are intact)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from realign.data.datasets import DataConfig
from realign.recipes.common import ModelSpec
from tasks.cache import DataFileContents, EarlierOutputs, LocalModel, stage_task
from tasks.stages import StageResult


def files_config(tmp_path) -> DataConfig:
    for name in ("prompts", "sft", "eval"):
        (tmp_path / f"{name}.jsonl").write_text(f'{{"prompt": "{name}", "answer": "1"}}\n')
    return DataConfig(
        source="files",
        prompts=str(tmp_path / "prompts.jsonl"),
        sft=str(tmp_path / "sft.jsonl"),
        eval_sets=[{"name": "t", "role": "target", "path": str(tmp_path / "eval.jsonl")}],
    )


def key(policy, **inputs):
    return policy.compute_key(task_ctx=None, inputs=inputs, flow_parameters={})


def test_a_changed_data_file_changes_only_the_keys_of_stages_that_read_it(tmp_path):
    data = files_config(tmp_path)
    stage1, stage2 = DataFileContents(fields=("sft", "eval_sets")), DataFileContents(fields=("prompts", "eval_sets"))
    k1, k2 = key(stage1, data=data), key(stage2, data=data)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "prompts", "answer": "2"}\n')  # same path, new content
    assert key(stage1, data=data) == k1
    assert key(stage2, data=data) != k2
    (tmp_path / "eval.jsonl").write_text('{"prompt": "eval", "answer": "2"}\n')
    assert key(stage1, data=data) != k1
    # same content written again: same key (content, not time)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "prompts", "answer": "2"}\n')
    k2b = key(stage2, data=data)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "prompts", "answer": "2"}\n')
    assert key(stage2, data=data) == k2b
    assert key(stage1, data=DataConfig()) is None  # embedded data: nothing to read


def test_a_rewritten_earlier_output_changes_the_key_a_run_directory_does_not(tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"one")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    policy = EarlierOutputs()
    k = key(policy, pairs_path=str(pairs), model_dir=str(model), run_dir=str(run_dir), steps=3)
    (run_dir / "gate.json").write_text("{}")  # stages write into the run directory all the time
    assert key(policy, pairs_path=str(pairs), model_dir=str(model), run_dir=str(run_dir), steps=3) == k
    st = pairs.stat()
    pairs.write_bytes(b"two")
    os.utime(pairs, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert key(policy, pairs_path=str(pairs), model_dir=str(model), run_dir=str(run_dir), steps=3) != k
    k2 = key(policy, pairs_path=str(pairs), model_dir=str(model), run_dir=str(run_dir), steps=3)
    (model / "model.safetensors").write_bytes(b"w2-longer")
    assert key(policy, pairs_path=str(pairs), model_dir=str(model), run_dir=str(run_dir), steps=3) != k2
    assert key(policy, steps=3) is None


def test_a_local_base_model_is_part_of_stage_1s_key(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-1")
    spec = ModelSpec(path=str(model) + "/")
    k = key(LocalModel(), model=spec)
    (model / "model.safetensors").write_bytes(b"weights-two")  # replaced in place
    assert key(LocalModel(), model=spec) != k
    assert key(LocalModel(), model=ModelSpec()) is None  # the tiny kit is built by the stage itself


CALLS: list[int] = []


@stage_task("5-dummy")
def dummy_stage(run_dir: str, value: int, round: int = 1) -> StageResult:
    out = Path(run_dir) / "05_dummy"
    out.mkdir(parents=True, exist_ok=True)
    (out / "out.txt").write_text(str(value))
    CALLS.append(value)
    return StageResult(stage="5-dummy", out_dir=str(out), seconds=0.0)


def test_a_cached_stage_is_reused_only_while_its_outputs_are_intact(tmp_path):
    run_dir = tmp_path / "run"

    @flow
    def once() -> str:
        return dummy_stage(str(run_dir), 7, return_state=True).name

    with prefect_test_harness(server_startup_timeout=120):
        assert [once(), once()] == ["Completed", "Cached"] and len(CALLS) == 1
        (run_dir / "05_dummy" / "gate_5-dummy.json").write_text("{}")  # written by the gate after the stage
        assert once() == "Cached"
        (run_dir / "05_dummy" / "out.txt").unlink()  # an output deleted: the stage runs again
        assert [once(), once()] == ["Completed", "Cached"] and len(CALLS) == 2
        (run_dir / "05_dummy" / "out.txt").write_text("edited by hand")  # altered
        assert [once(), once()] == ["Completed", "Cached"] and len(CALLS) == 3
        shutil.rmtree(run_dir)  # the whole run directory deleted: a new run, nothing stale reused
        assert [once(), once()] == ["Completed", "Cached"] and len(CALLS) == 4
        assert (run_dir / "05_dummy" / "out.txt").read_text() == "7"
