"""Load MLX language models from a local directory or a Hugging Face hub id.

Everything goes through `mlx_lm.load`, so a tiny model from `realign model tiny`
and a real downloaded model take the same path.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realign.io import atomic_dir


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message says what to do."""


@dataclass
class LoadedModel:
    """An MLX model with its tokenizer.

    model: the `mlx.nn.Module` (a causal LM returning logits [batch, seq, vocab]).
    tokenizer: mlx-lm's TokenizerWrapper (HF tokenizer + streaming detokenizer).
    path: the local directory the weights were read from.
    config: the model's config.json as a dict.
    """

    model: Any
    tokenizer: Any
    path: Path
    config: dict


def looks_like_path(spec: str) -> bool:
    """A local path rather than a hub id ('org/name'): starts with . / ~, ends with /, or has more than one /."""
    return (
        spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec
    )


def check_model_dir(path: Path) -> None:
    """Raise ModelLoadError unless `path` holds config.json and *.safetensors weights."""
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a directory; pass a model directory holding config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: config.json is missing (expected a Hugging Face/MLX model directory)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path}: no *.safetensors weights found (expected model.safetensors or shards)")


def resolve_model_path(path_or_repo: str | os.PathLike) -> Path:
    """A local directory for `path_or_repo`, downloading a hub id if the hub is reachable.

    Raises ModelLoadError naming the local-path alternative when a hub id
    cannot be fetched (offline, unknown repo, no access).
    """
    spec = str(path_or_repo)
    local = Path(spec).expanduser()
    if local.exists():
        check_model_dir(local)
        return local
    if looks_like_path(spec):
        raise ModelLoadError(
            f"{spec}: no such model directory. Build a local tiny model with "
            f"`realign model tiny {spec}` or pass an existing directory holding config.json and *.safetensors"
        )
    try:
        from huggingface_hub import snapshot_download
        from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

        try:
            return Path(snapshot_download(spec, allow_patterns=DEFAULT_ALLOW_PATTERNS, local_files_only=True))
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            return Path(snapshot_download(spec, allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
        raise ModelLoadError(
            f"'{spec}' is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            f"This machine may be offline. Download it elsewhere and pass the local directory "
            f"(e.g. --model ./models/{spec.split('/')[-1]}), or build a tiny local model with "
            f"`realign model tiny ./tiny-model` and pass --model ./tiny-model"
        ) from exc


def load_model(path_or_repo: str | os.PathLike, *, adapter_path: str | None = None) -> LoadedModel:
    """Load model + tokenizer from a local directory or a hub id (see resolve_model_path)."""
    import mlx_lm

    path = resolve_model_path(path_or_repo)
    try:
        model, tokenizer, config = mlx_lm.load(str(path), adapter_path=adapter_path, return_config=True)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise ModelLoadError(f"{path}: could not load the model with mlx-lm: {exc}") from exc
    except RuntimeError as exc:  # MLX's loader: "[load_safetensors] Invalid json header length file ..."
        bad = next((f for f in sorted(path.glob("*.safetensors")) if not _safetensors_readable(f)), None)
        where = bad or path
        raise ModelLoadError(f"{where}: cannot be read as model weights ({exc}); rebuild or re-download it") from exc
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, config=config)


def _safetensors_readable(path: Path) -> bool:
    """The file has a well-formed safetensors header (8-byte length + JSON within the file)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > path.stat().st_size - 8:
                return False
            json.loads(fh.read(size))
        return True
    except (OSError, ValueError):
        return False


def fuse_adapters(model) -> None:
    """Fold LoRA adapters into their base linear layers, in place (no-op without adapters)."""
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear

    fused = [(name, m.fuse()) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))


def save_model(model, source_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `model` as a model directory (adapters fused) with `source_dir`'s config and tokenizer files.

    Written to a temporary sibling and renamed into place, so a crash leaves no half model.
    Returns out_dir. Adapters in `model` are fused in place.
    """

    import mlx.core as mx
    from mlx.utils import tree_flatten

    src, out = Path(source_dir), Path(out_dir)
    fuse_adapters(model)
    with atomic_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy2(f, tmp / f.name)
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out


def weights_finite(model) -> bool:
    """Every parameter of `model` is finite (no NaN or inf): a reference that loads but holds NaN is not present."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return all(bool(mx.all(mx.isfinite(v)).item()) for _, v in tree_flatten(model.parameters()))
