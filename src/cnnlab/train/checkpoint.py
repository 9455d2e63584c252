"""Saving and loading models and training state: safetensors weights + JSON metadata.

A MODEL is one `.safetensors` file whose metadata embeds the model JSON (architecture name,
factory arguments, class names, input channels / size, normalisation), so the file alone
rebuilds the model. A run folder holds the same JSON beside it as `model.json` for people.
`last.safetensors` adds the optimizer state (tensors under `optimizer.` keys, the rest in
metadata) for a later resume. Nothing is ever unpickled; every write is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.atomic import atomic_path, write_json
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.engine import PIXEL_SCALE

FORMAT = "cnnlab-model"
FORMAT_VERSION = 1
META_KEY = "cnnlab_model"  # safetensors metadata key holding the model JSON
OPTIM_KEY = "cnnlab_optimizer"  # metadata key holding the optimizer's non-tensor state
MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"


def model_meta(
    architecture: str,
    kwargs: dict[str, Any],
    class_names: list[str],
    **extra: Any,
) -> dict[str, Any]:
    """The model JSON: everything needed to rebuild the model and prepare its input."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "kwargs": kwargs,
        "class_names": list(class_names),
        "input": {
            "channels": kwargs["in_channels"],
            "size": list(kwargs["image_size"]),  # (H, W)
            "dtype": "uint8",
            "normalisation": {"scale": PIXEL_SCALE, "mean": 0.0, "std": 1.0},  # x/255
        },
        **extra,
    }


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights + embedded model JSON to a self-contained `.safetensors` file."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(_state_tensors(model), str(tmp), metadata={META_KEY: json.dumps(meta)})
    except OSError as e:
        raise CnnlabError(f"cannot write model ({e.strerror or e})", path) from None
    return path


def save_last(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    *,
    epoch: int,
) -> Path:
    """Model + optimizer state after `epoch` (1-based), for resuming a run later."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"model.{k}": v for k, v in _state_tensors(model).items()}
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    optim_meta = {
        "class": type(optimizer).__name__,
        "param_groups": state["param_groups"],
        "scalars": scalars,
        "epoch": epoch,
    }
    try:
        with atomic_path(path) as tmp:
            save_file(
                tensors,
                str(tmp),
                metadata={META_KEY: json.dumps(meta), OPTIM_KEY: json.dumps(optim_meta)},
            )
    except OSError as e:
        raise CnnlabError(f"cannot write checkpoint ({e.strerror or e})", path) from None
    return path


def resolve_model_file(src: str | Path) -> Path:
    """A run folder -> its model.safetensors; a file -> itself. Missing files are errors."""
    src = Path(src)
    if src.is_dir():
        f = src / MODEL_FILE
        if not f.is_file():
            raise CnnlabError(f"run folder has no {MODEL_FILE} (not a finished cnnlab run?)", src)
        return f
    if not src.exists():
        raise CnnlabError("no such run folder or model file", src)
    return src


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; corrupt or truncated files are errors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers/data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CnnlabError(f"not a readable .safetensors file ({msg})", path) from None
    return tensors, meta


def load_model(src: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a run folder or a `.safetensors` MODEL file; returns (model, meta).

    Examples
    --------
    >>> model, meta = load_model("runs/mnist")  # doctest: +SKIP
    >>> meta["class_names"][:3]  # doctest: +SKIP
    ['0', '1', '2']
    """
    path = resolve_model_file(src)
    tensors, raw = read_safetensors(path)
    if META_KEY not in raw:
        raise CnnlabError("safetensors file without cnnlab model metadata", path)
    try:
        meta = json.loads(raw[META_KEY])
        if meta.get("format") != FORMAT:
            raise ValueError("wrong format tag")
        arch, kwargs = meta["architecture"], dict(meta["kwargs"])
        kwargs["image_size"] = tuple(kwargs["image_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise CnnlabError(f"cnnlab model metadata is malformed ({e})", path) from None
    model = create_model(arch, **kwargs)
    if any(k.startswith("model.") for k in tensors):  # a last.safetensors checkpoint
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CnnlabError(f"weights do not fit architecture '{arch}' ({first})", path) from None
    model.eval()
    return model, meta


def write_model_json(run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """The human-readable copy of the model JSON in a run folder."""
    path = Path(run_dir) / "model.json"
    write_json(path, meta)
    return path


def update_model_meta(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level fields of a MODEL file's JSON (weights unchanged); returns the new JSON.

    The file is rewritten atomically; a run's model.json beside its model.safetensors gets
    the same fields, so the two stay in step.
    """
    from safetensors.torch import save_file

    path = resolve_model_file(path)
    tensors, raw = read_safetensors(path)
    if META_KEY not in raw:
        raise CnnlabError("safetensors file without cnnlab model metadata", path)
    meta = {**json.loads(raw[META_KEY]), **fields}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={**raw, META_KEY: json.dumps(meta)})
    except OSError as e:
        raise CnnlabError(f"cannot write model ({e.strerror or e})", path) from None
    beside = path.parent / "model.json"
    if path.name == MODEL_FILE and beside.is_file():
        try:
            on_disk = json.loads(beside.read_text())
        except (OSError, ValueError):
            on_disk = meta
        write_model_json(path.parent, {**on_disk, **fields})
    return meta
