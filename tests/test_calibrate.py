"""Calibration: batch choice, a real sweep on the tiny model, the profile a later run uses."""

import json

import pytest

from hardware.calibrate import calibrate, choose_batch
from hardware.profiles import DetectedMachine, load_calibration, match_profile, save_calibration


def test_choose_batch_takes_the_smallest_within_5_percent_of_peak():
    # an M3-Ultra-like curve that peaks early
    assert choose_batch({1: 80, 2: 150, 4: 270, 8: 278, 16: 276, 32: 275}) == 4
    assert choose_batch({1: 10, 2: 20, 4: 40, 8: 80, 16: 100, 32: 103}) == 16
    with pytest.raises(ValueError):
        choose_batch({})


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
