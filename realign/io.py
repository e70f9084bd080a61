"""Atomic writes: a reader sees the old file or the new one whole, never half of one.

Every writer in realign (and in tasks/ and gates/) goes through these.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (read by setting and restoring it: the only way POSIX offers)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(base: int) -> int:
    """Permissions a plain open() or mkdir() would give: temporary files are 0600 and directories 0700, which would
    hide every output from the group on the shared storage two machines use."""
    return base & ~_umask()


@contextmanager
def atomic_path(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside `path`; on success rename it over `path` (with the permissions the umask gives
    a new file), on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )  # same filesystem: rename is atomic
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, _mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Build a directory in a temporary sibling; on success replace `path` with it, on error remove it.

    Readers never see a half-written directory (a model, a checkpoint): it is there whole or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(_mode(0o777))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_clean(value: Any) -> Any:
    """NaN -> None recursively: JSON has no NaN, and 'not computed' must stay visible as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic, indented JSON; NaN becomes null."""
    path = Path(path)
    with atomic_path(path, "w") as fh:
        fh.write(json.dumps(_json_clean(data), indent=2, default=str))
    return path


def write_parquet(path: str | Path, frame) -> Path:
    """Atomic Parquet write of a pandas DataFrame."""
    path = Path(path)
    with atomic_path(path, "wb") as fh:
        frame.to_parquet(fh)
    return path
