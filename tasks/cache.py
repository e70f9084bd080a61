"""Stage cache policies: a stage re-runs only when its inputs, its code, or the files it reads change."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects

from realign.data.datasets import DataConfig
from realign.io import write_json
from realign.model.load import ADAPTER_CONFIG, looks_like_path
from realign.recipes.common import ModelSpec


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


def weights_digest(model_dir: str | Path) -> str:
    """sha256 digests of a model directory's weight files: a resume key that names the start model by its
    contents, so checkpoints trained from an earlier model written at the same path are never resumed."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return ",".join(f"{f.name}:{file_digest(f)}" for f in files) or f"no weights in {model_dir}"


@dataclass
class DataFileContents(CachePolicy):
    """Adds the contents of the user data files a stage reads to its cache key.

    Parameters name files by path; a fixed file at the same path must re-run the stages that read
    it (and only those), so a retry after fixing the data does not reuse results built from the old one.
    fields: which DataConfig files the stage reads ('prompts', 'sft', 'eval_sets', 'pairs').
    """

    fields: tuple[str, ...] = ("prompts", "sft", "eval_sets")

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        digests = []
        for value in inputs.values():
            if not isinstance(value, DataConfig):
                continue
            for field in self.fields:
                if value.source != "files" and field != "pairs":  # embedded data may still come with given pairs
                    continue
                paths = [e.path for e in value.eval_sets] if field == "eval_sets" else [getattr(value, field)]
                digests += [f"{field}:{file_digest(p)}" for p in paths if p]
        return hash_objects(*digests) if digests else None


@dataclass
class LocalModel(CachePolicy):
    """Adds the identity of a local base model's files (names, sizes, modification times) to stage 1's key, so
    weights replaced in place re-run stage 1 (and, through EarlierOutputs, everything after it)."""

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        sig = []
        for value in inputs.values():
            if not isinstance(value, ModelSpec) or value.path == "tiny":
                continue
            p = Path(value.path).expanduser()
            if p.exists():  # what load_model would load locally, however it is spelled ("models/qwen", "qwen")
                sig.append(_signature(p))
            elif looks_like_path(value.path):
                sig.append(f"missing:{p}")
        return hash_objects(*sig) if sig else None


def _signature(path: Path) -> list:
    """(name, size, mtime_ns, inode) of a file, or of every file in a model directory: a file written again, or
    replaced by another one (even with the same size and time), changes it."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns, st.st_ino))
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
                if p.is_file() or (p.is_dir() and any((p / f).is_file() for f in ("config.json", ADAPTER_CONFIG))):
                    sig.append((name, _signature(p)))
        return hash_objects(*sig) if sig else None


def _manifest(out_dir: Path) -> dict[str, list[int]]:
    """(size, mtime_ns) of every file a stage wrote in its directory; gate reports and the final model's card
    (README.md, written with the summary), both after it, and hidden temporaries are not the stage's outputs."""
    if not out_dir.is_dir():
        return {}
    out = {}
    for f in sorted(out_dir.rglob("*")):
        rel = f.relative_to(out_dir)
        written_after = f.name.startswith("gate_") or f.name == "README.md"
        if f.is_file() and not written_after and not any(part.startswith(".") for part in rel.parts):
            st = f.stat()
            out[str(rel)] = [st.st_size, st.st_mtime_ns]
    return out


def run_identity(run_dir: Path) -> str:
    """A random id kept in RUN_DIR/.run-id: a run directory deleted and made again is a new run, never a cache hit."""
    path = run_dir / ".run-id"
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as fh:  # first writer wins
            fh.write(uuid.uuid4().hex)
    return path.read_text().strip()


def _record_path(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.json"


@dataclass
class StageOutputs(CachePolicy):
    """Reuse a stage's stored result only while the outputs it recorded are still there, unchanged.

    Each stage task records the files of its output directory when it completes (`record_outputs`, an
    on_completion hook) in RUN_DIR/.stages/STAGE.json with a generation number that is part of the key.
    When the recorded files are missing or differ, the generation goes up: the key is new, so the stage runs
    again (and the stages after it, whose inputs it rewrites); once it has recorded its new outputs, the new
    key is stable and retries reuse it.
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        run_dir = inputs.get("run_dir")
        if not isinstance(run_dir, str) or task_ctx is None:
            return None
        rnd = inputs.get("round", 1)
        stage = task_ctx.task.name + (f"-round{rnd}" if isinstance(rnd, int) and rnd > 1 else "")
        root = Path(run_dir)
        return hash_objects(run_identity(root), _generation(root, stage))


def _generation(run_dir: Path, stage: str) -> int:
    path = _record_path(run_dir, stage)
    if not path.is_file():
        return 0
    record = json.loads(path.read_text())
    if record.get("manifest") is None or _manifest(Path(record["out_dir"])) == record["manifest"]:
        return int(record["generation"])  # unchanged outputs, or a run of this generation still to finish
    # The outputs are gone or changed since the stage recorded them: a new key, so the stage runs again.
    generation = int(record["generation"]) + 1
    write_json(path, {"generation": generation, "out_dir": record["out_dir"], "manifest": None})
    return generation


def record_outputs(result: Any) -> None:
    """Record what a stage's output directory holds now (see StageOutputs): called by every stage task as it
    returns, before its result is stored, so a stored result always has its record."""
    out_dir, stage = getattr(result, "out_dir", None), getattr(result, "stage", None)
    if not out_dir or not stage:
        return
    out = Path(out_dir)
    path = _record_path(out.parent, stage)
    generation = json.loads(path.read_text())["generation"] if path.is_file() else 0
    write_json(path, {"generation": generation, "out_dir": str(out), "manifest": _manifest(out)})


# A stage is re-run only when its inputs, its code, the earlier outputs it reads or its own recorded outputs
# change: retrying a failed run re-executes the failed stage and those after it, and reads earlier results
# from storage.
STAGE_CACHE = INPUTS + TASK_SOURCE + EarlierOutputs() + StageOutputs()


def stage_cache(*reads: str):
    """STAGE_CACHE plus the contents of the data files a stage reads (DataFileContents) and of a local base model."""
    return STAGE_CACHE + DataFileContents(fields=tuple(reads)) + LocalModel()


def stage_task(name: str, reads: tuple[str, ...] = ()):
    """The @task of a stage: cached by STAGE_CACHE (+ the data files it `reads`), result persisted so a retry
    reuses it, its outputs recorded as it returns so a cached result is only used while they are intact."""

    def decorate(fn):
        @functools.wraps(fn)  # Prefect reads the signature, and TASK_SOURCE the source, through __wrapped__
        def stage(*args, **kwargs):
            result = fn(*args, **kwargs)
            record_outputs(result)
            return result

        return task(name=name, cache_policy=stage_cache(*reads) if reads else STAGE_CACHE, persist_result=True)(stage)

    return decorate
