"""Atomic writes keep the permissions the umask gives new files (group-readable outputs on shared storage)."""

from __future__ import annotations

import os
import stat

import pytest

from realign.io import atomic_dir, write_json


@pytest.mark.parametrize(
    "umask,file_mode,dir_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        f = write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "model") as d:
            (d / "w.txt").write_text("w")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode
    assert os.umask(old) == old  # the umask itself is left as it was
