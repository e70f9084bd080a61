"""Stage cache policies: a stage re-runs only when its inputs, its code, or the files it reads change."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects

from realign.data.datasets import DataConfig


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes ('missing:PATH' when absent, so the stage runs and reports it)."""
    p = Path(path)
    if not p.is_file():
        return f"missing:{p}"
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class DataFileContents(CachePolicy):
    """Adds the contents of the user data files a stage reads to its cache key.

    Parameters name files by path; a fixed file at the same path must re-run the stages that read
    it (and only those), so a retry after fixing the data does not reuse results built from the old one.
    fields: which DataConfig files the stage reads ('prompts', 'sft', 'eval_sets').
    """

    fields: tuple[str, ...] = ("prompts", "sft", "eval_sets")

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        digests = []
        for value in inputs.values():
            if not isinstance(value, DataConfig) or value.source != "files":
                continue
            for field in self.fields:
                paths = [e.path for e in value.eval_sets] if field == "eval_sets" else [getattr(value, field)]
                digests += [f"{field}:{file_digest(p)}" for p in paths if p]
        return hash_objects(*digests) if digests else None


def _signature(path: Path) -> list:
    """(name, size, mtime_ns) of a file, or of every file in a model directory."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return out


@dataclass
class EarlierOutputs(CachePolicy):
    """Adds the identity (size, modification time) of the files and model directories a stage is
    given by path, so when an earlier stage re-runs and rewrites its output at the same path, the
    stages that read it re-run too instead of reusing results built from the old one.
    Run directories themselves (no config.json) are not signed: every stage writes into them.
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        sig = []
        for name, value in sorted(inputs.items()):
            for v in value if isinstance(value, list) else [value]:
                if not isinstance(v, str) or not v or len(v) > 4096:
                    continue
                p = Path(v)
                if p.is_file() or (p.is_dir() and (p / "config.json").is_file()):
                    sig.append((name, _signature(p)))
        return hash_objects(*sig) if sig else None


# A stage is re-run only when its inputs, its code or the earlier outputs it reads change: retrying a
# failed run re-executes the failed stage and those after it, and reads earlier results from storage.
STAGE_CACHE = INPUTS + TASK_SOURCE + EarlierOutputs()


def stage_cache(*reads: str):
    """STAGE_CACHE plus the contents of the data files the stage reads (see DataFileContents)."""
    return STAGE_CACHE + DataFileContents(fields=tuple(reads))
