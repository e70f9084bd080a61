"""Calibration: batch choice, a real sweep on the tiny model, the profile a later run uses, and its model key."""

import json

import pytest

from hardware.calibrate import (
    calibrate,
    calibration_applies,
    calibration_key,
    choose_batch,
    choose_threads,
    thread_counts,
)
from hardware.profiles import DetectedMachine, apply_blas_threads, load_calibration, match_profile, save_calibration
from hardware.sizing import KNOWN_SHAPES, ModelKey, quantise, size_from_config
from realign._blas import blas_threads, set_blas_threads


def test_choose_batch_takes_the_smallest_within_5_percent_of_peak():
    # an M3-Ultra-like curve that peaks early
    assert choose_batch({1: 80, 2: 150, 4: 270, 8: 278, 16: 276, 32: 275}) == 4
    assert choose_batch({1: 10, 2: 20, 4: 40, 8: 80, 16: 100, 32: 103}) == 16
    with pytest.raises(ValueError):
        choose_batch({})


def test_choose_threads_takes_the_fewest_within_5_percent_of_the_fastest():
    # small matmuls: one thread as fast as two (within 5%), so one, leaving the other core free
    assert choose_threads({1: 8.1, 2: 8.3}) == 1
    assert choose_threads({1: 4.0, 2: 7.5, 4: 9.0, 8: 9.2}) == 4  # 9.0 >= 0.95 * 9.2 = 8.74; 7.5 is not
    with pytest.raises(ValueError):
        choose_threads({})
    assert thread_counts(2) == [1, 2] and thread_counts(12) == [1, 2, 4, 8, 12] and thread_counts(1) == [1]


def test_profile_matching():
    assert match_profile(DetectedMachine("Darwin", "Apple M4 Max", 128, 16)).name == "m4-max"
    assert match_profile(DetectedMachine("Darwin", "Apple M3 Ultra", 512, 32)).name == "m3-ultra"
    assert match_profile(DetectedMachine("Linux", "Intel(R) Xeon(R)", 24, 2)) is None


def test_linux_detection_reads_proc():
    import os
    import sys

    from hardware.profiles import detect

    if not sys.platform.startswith("linux"):
        pytest.skip("Linux /proc")
    m = detect()
    assert m.memory_gb == pytest.approx(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, rel=0.01)
    assert m.chip and m.cpus == os.cpu_count()


def test_calibration_sweeps_the_real_workload_and_is_saved(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REALIGN_PROFILE_DIR", str(tmp_path))
    points = []
    result = calibrate(
        str(tiny_model_dir), batch_sizes=(1, 4, 16), max_tokens=4, rounds=1, on_point=lambda b, v: points.append(b)
    )
    assert points == [1, 4, 16] and set(result.curve) == {1, 4, 16}
    assert all(v > 0 for v in result.curve.values()) and result.gflops > 0
    assert result.chosen_batch == choose_batch(result.curve)
    assert load_calibration() is None  # nothing calibrated yet in this profile dir
    path = save_calibration(result.as_dict())
    assert json.loads(path.read_text())["chosen_batch"] == result.chosen_batch
    assert load_calibration()["chosen_batch"] == result.chosen_batch
    # keyed by the model swept: the tiny Qwen2, 754,816 fp32 parameters
    tiny = size_from_config(json.loads((tiny_model_dir / "config.json").read_text())).key()
    assert result.model_key == {"model_type": "qwen2", "params": 754_816, "bits": 32.0} == tiny.as_dict()
    assert calibration_key(load_calibration()) == tiny
    # the thread sweep measured every count (steps/s and CPU time) and chose by the rule above
    threads = result.blas_threads
    if blas_threads() is not None:
        assert set(threads["steps_per_s"]) == {str(n) for n in thread_counts()}
        assert all(v > 0 for v in threads["steps_per_s"].values())
        assert all(v > 0 for v in threads["cpu_s_per_step"].values())
        assert threads["chosen"] == choose_threads({int(n): v for n, v in threads["steps_per_s"].items()})
        assert load_calibration()["blas_threads"]["chosen"] == threads["chosen"]


@pytest.mark.skipif(blas_threads() is None, reason="needs the preloaded OpenBLAS")
def test_runs_use_the_calibrated_thread_count_only_for_a_model_like_the_one_measured(
    tiny_model_dir, tmp_path, monkeypatch
):
    from realign.model.tiny import TinyModelConfig

    monkeypatch.setenv("REALIGN_PROFILE_DIR", str(tmp_path))
    monkeypatch.delenv("REALIGN_BLAS_THREADS", raising=False)
    before = blas_threads()
    try:
        set_blas_threads(2)
        assert "uncalibrated" in apply_blas_threads(str(tiny_model_dir)) and blas_threads() == 2
        save_calibration(tiny_calibration(tiny_model_dir, blas_threads={"chosen": 1}))
        # a bigger tiny model (another key): not used
        said = apply_blas_threads("tiny", TinyModelConfig(hidden=256).model_dump())
        assert "choice 1 not used" in said and blas_threads() == 2
        # the same model, by directory or as the recipe's "tiny" (its key computed before it is built): used
        said = apply_blas_threads("tiny", TinyModelConfig().model_dump())
        assert said.startswith("OpenBLAS threads: 1, as calibrated") and blas_threads() == 1
        set_blas_threads(2)
        apply_blas_threads(str(tiny_model_dir))
        assert blas_threads() == 1
        monkeypatch.setenv("REALIGN_BLAS_THREADS", "2")  # the user's own choice wins
        set_blas_threads(2)
        assert "REALIGN_BLAS_THREADS" in apply_blas_threads(str(tiny_model_dir)) and blas_threads() == 2
    finally:
        set_blas_threads(before)


def tiny_calibration(tiny_model_dir, **extra) -> dict:
    """A calibration as `realign calibrate` saves it for the tiny model on an M4 Max (batch 48)."""
    key = size_from_config(json.loads((tiny_model_dir / "config.json").read_text())).key()
    return {"chosen_batch": 48, "profile": "m4-max", "model": str(tiny_model_dir), "model_key": key.as_dict(), **extra}


def test_a_tiny_model_calibration_is_not_used_for_a_70b_plan(tiny_model_dir):
    from hardware.plan import make_plan

    cal = tiny_calibration(tiny_model_dir)
    p = make_plan("70B", 1000, quantization="4bit", calibration=cal)  # a 4-bit 70B fits the M4 Max
    assert p.batch_size["m4-max"] == 32 and p.memory["batch"] == 32  # the profile's, not the tiny model's 48
    assert "qwen2, 0.000755B parameters, 32-bit" in p.calibration and "not this model" in p.calibration
    assert "profile defaults" in p.calibration
    # the same calibration on the tiny model itself is used
    own = make_plan(str(tiny_model_dir), 1000, calibration=cal)
    assert own.batch_size["m4-max"] == 48 and own.memory["batch"] == 48 and "matches" in own.calibration
    assert own.batch_size["m3-ultra"] == 4  # measured on the M4 Max only


def test_a_70b_calibration_applies_to_a_70b_plan_of_the_same_bits():
    from hardware.plan import make_plan

    llama70 = quantise(size_from_config(KNOWN_SHAPES["Llama-3.1-70B"]), 4).key()  # 70.55B, measured
    cal = {"chosen_batch": 16, "profile": "m4-max", "model_key": llama70.as_dict()}
    p = make_plan("70B", 1000, quantization="4bit", calibration=cal)  # "70B" is 70.55B rounded: within 5%
    assert p.batch_size["m4-max"] == 16 and p.memory["batch"] == 16
    bf16 = make_plan("70B", 1000, calibration=cal)  # the same model at 16 bits is not what was measured
    assert "not this model" in bf16.calibration and bf16.memory["batch"] == 32
    lora = make_plan("70B", 1000, quantization="4bit", method="lora", calibration=cal)
    assert "not used for a training plan" in lora.calibration and lora.batch_size == {"m3-ultra": 8}


def test_model_keys_match_on_architecture_size_and_bits():
    k = ModelKey("llama", 8.03e9, 16)
    assert k.matches(ModelKey(None, 8e9, 16))  # a size named in a request: any architecture
    assert not k.matches(ModelKey("llama", 7e9, 16))  # 7B is not 8B
    assert not k.matches(ModelKey("llama", 8.03e9, 4))  # nor 4-bit 16-bit
    assert not k.matches(ModelKey("qwen2", 8.03e9, 16))


def test_old_calibrations_without_a_key(tiny_model_dir, tmp_path):
    from hardware.plan import make_plan

    # saved before keys existed, by a sweep of a model whose directory is gone (the CLI's temporary tiny model)
    gone = {"chosen_batch": 48, "profile": "m4-max", "model": str(tmp_path / "deleted" / "tiny")}
    assert calibration_key(gone) is None
    ok, why = calibration_applies(gone, ModelKey("qwen2", 754_816, 32))
    assert not ok and "names no model" in why
    p = make_plan(str(tiny_model_dir), 100, calibration=gone)
    assert p.batch_size["m4-max"] == 32 and "names no model" in p.calibration
    # the model directory still there: its config.json gives the key
    legacy = {"chosen_batch": 48, "profile": "m4-max", "model": str(tiny_model_dir)}
    assert make_plan(str(tiny_model_dir), 100, calibration=legacy).batch_size["m4-max"] == 48
    assert calibration_applies(None, ModelKey(None, 1, 16)) == (False, "this machine is not calibrated")


def test_a_generic_machines_calibration_names_no_planned_machine(tiny_model_dir):
    from hardware.plan import make_plan

    p = make_plan(str(tiny_model_dir), 100, calibration=tiny_calibration(tiny_model_dir, profile="generic"))
    assert p.batch_size == {"m4-max": 32, "m3-ultra": 4} and "generic machine" in p.calibration
