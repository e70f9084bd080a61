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
    """Load model + tokenizer from a local directory or a hub id (see resolve_model_path), or a stage's adapter
    directory (its base chain loaded and each level's adapters fused in memory; `path` is then the root model's)."""
    import mlx_lm

    if is_adapter_dir(Path(path_or_repo).expanduser()) and adapter_path is None:
        return _load_adapter_chain(Path(path_or_repo).expanduser())
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
    """Fold LoRA adapters into their base layers, in place (no-op without adapters): a full-precision layer's into its
    weights; a quantised layer's into a ChainedQuantizedLinear beside its 4-bit weights (exact and small; fusing would
    re-quantise, realign.model.chain says why)."""
    import mlx.nn as nn
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear

    from realign.model.chain import ChainedQuantizedLinear

    fused = [
        (name, ChainedQuantizedLinear.from_lora(m) if isinstance(m.linear, nn.QuantizedLinear) else m.fuse())
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear)
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))


def _dense_chains(model) -> None:
    """Chained quantised layers as full-precision layers with their updates added, in place, for a model directory
    mlx-lm can load (the adapted layers at 16-bit, the others still quantised: mlx-lm reads each layer's `.scales`)."""
    from mlx.utils import tree_unflatten

    from realign.model.chain import ChainedQuantizedLinear

    dense = [(name, m.dense()) for name, m in model.named_modules() if isinstance(m, ChainedQuantizedLinear)]
    if dense:
        model.update_modules(tree_unflatten(dense))


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A stage's LoRA output: adapters in mlx-lm's layout on top of the model named in adapter_config.json."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | os.PathLike) -> Path:
    """The model directory (or adapter directory) the adapters in `path` were trained on."""
    p = Path(path)
    try:
        base = json.loads((p / ADAPTER_CONFIG).read_text())["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{p / ADAPTER_CONFIG}: cannot read the base model it names ({exc})") from exc
    return (p / base).resolve() if not Path(base).is_absolute() else Path(base)


def adapter_levels(path: str | os.PathLike) -> tuple[list[Path], Path]:
    """(the adapter directories from the root's first stage to `path`, the full model directory under them: where
    config and tokenizer files are)."""
    levels, p, seen = [], Path(path), set()
    while is_adapter_dir(p):
        if p.resolve() in seen:
            raise ModelLoadError(f"{p / ADAPTER_CONFIG}: its base model chain loops back to {p}")
        seen.add(p.resolve())
        levels.append(p)
        p = adapter_base(p)
    return levels[::-1], p


def model_root(path: str | os.PathLike) -> Path:
    """The full model directory under a chain of adapter directories (where config and tokenizer files are)."""
    return adapter_levels(path)[1]


def _load_adapter_chain(path: Path) -> LoadedModel:
    """The base model with each level of adapters applied and fused in memory, in order."""
    from mlx_lm.tuner.utils import load_adapters

    base = adapter_base(path)
    if not base.exists():
        raise ModelLoadError(
            f"{path / ADAPTER_CONFIG}: the model these adapters were trained on, {base} (field 'model'), does not "
            "exist: restore it there, or edit the field to where it is now"
        )
    lm = load_model(base)
    try:
        load_adapters(lm.model, str(path))
    except (ValueError, FileNotFoundError) as exc:
        raise ModelLoadError(f"{path}: could not apply its adapters to {adapter_base(path)}: {exc}") from exc
    fuse_adapters(lm.model)
    return lm


def _lora_config(model) -> dict | None:
    """mlx-lm's adapter_config fields for the LoRA layers in `model` (None without adapters)."""
    from mlx_lm.tuner.lora import LoRALinear

    blocks = getattr(model, "layers", None) or getattr(getattr(model, "model", None), "layers", [])
    keys, adapted, first = set(), 0, None
    for block in blocks:
        names = [n for n, m in block.named_modules() if isinstance(m, LoRALinear)]
        if names:
            adapted += 1
            keys.update(names)
            first = first or next(m for n, m in block.named_modules() if isinstance(m, LoRALinear))
    if first is None:
        return None
    dropout = 1.0 - getattr(first.dropout, "_p_1", 1.0)  # mlx's Dropout keeps the keep-probability
    params = {"rank": int(first.lora_a.shape[1]), "scale": float(first.scale), "dropout": float(dropout)}
    return {"fine_tune_type": "lora", "num_layers": adapted, "lora_parameters": {**params, "keys": sorted(keys)}}


def base_reference_of(src: Path, out: Path) -> str:
    """The base as adapter_config.json names it: relative inside the run directory (RUN/stage/model), so a moved or
    copied run keeps its chain; absolute to a model outside it (the user's model directory stays where it is)."""
    run_dir = out.resolve().parent.parent
    if src.resolve().is_relative_to(run_dir):
        return os.path.relpath(src.resolve(), out.resolve())
    return str(src.resolve())


def save_model(model, source_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fuse: bool = False) -> Path:
    """Write `model`, trained from `source_dir`, to `out_dir`.

    With LoRA adapters (and not `fuse`): only the adapters, in mlx-lm's layout (adapters.safetensors +
    adapter_config.json naming `source_dir` as its base, relative when it can be), so a stage costs megabytes, not a
    model copy; `load_model` applies the chain. Otherwise a full model directory (adapters fused in place) written by
    mlx-lm's save_model (shards and index) with the root model's config and tokenizer files.
    Written to a temporary sibling and renamed into place, so a crash leaves no half model. Returns out_dir.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import save_model as mlx_save_model

    src, out = Path(source_dir), Path(out_dir)
    lora = None if fuse else _lora_config(model)
    if lora is not None:
        weights = {k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}
        with atomic_dir(out) as tmp:
            mx.save_safetensors(str(tmp / ADAPTER_WEIGHTS), weights, metadata={"format": "mlx"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps({**lora, "model": base_reference_of(src, out)}, indent=2))
        return out
    root = model_root(src)
    fuse_adapters(model)
    _dense_chains(model)
    with atomic_dir(out) as tmp:
        for f in root.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy2(f, tmp / f.name)
        mlx_save_model(tmp, model)
    return out


def weights_finite(model) -> bool:
    """Every parameter of `model` is finite (no NaN or inf): a reference that loads but holds NaN is not present."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return all(bool(mx.all(mx.isfinite(v)).item()) for _, v in tree_flatten(model.parameters()))
