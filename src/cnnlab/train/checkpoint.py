"""Saving and loading models and training state: safetensors weights + JSON metadata.

A MODEL is one `.safetensors` file whose metadata embeds the model JSON (architecture name,
factory arguments, class names, input channels / size, normalisation), so the file alone
rebuilds the model. A run folder holds the same JSON beside it as `model.json` for people.
`last.safetensors` adds the optimizer state (tensors under `optimizer.` keys, the rest in
metadata) for a later resume; the one it replaces is kept as `previous.safetensors`.
Nothing is ever unpickled; every write is atomic (temporary file, fsync, rename), and every
file carries a sha256 of its tensors and metadata that `read_safetensors` verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.atomic import atomic_path, write_json
from cnnlab.data.augment import tta_symmetry
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.engine import PIXEL_SCALE

FORMAT = "cnnlab-model"
FORMAT_VERSION = 1
META_KEY = "cnnlab_model"  # safetensors metadata key holding the model JSON
OPTIM_KEY = "cnnlab_optimizer"  # metadata key holding the optimizer's non-tensor state
CHECKSUM_KEY = "cnnlab_sha256"  # metadata key holding tensor_checksum() of the file
MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
PREVIOUS_FILE = "previous.safetensors"  # the last good checkpoint before LAST_FILE


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


def tensor_checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and metadata entry, in key order.

    Independent of how safetensors lays the file out, so a file is checked by what it holds.
    """
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"tensor\0{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    for key in sorted(metadata):
        if key != CHECKSUM_KEY:
            h.update(f"meta\0{key}\0{metadata[key]}\0".encode())
    return h.hexdigest()


def write_safetensors(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    what: str = "model",
    keep_previous: str | Path | None = None,
) -> Path:
    """Checksum, then write atomically; `keep_previous` receives the file being replaced.

    The old file is moved aside only once the new one is complete on disk (a crash in
    between leaves `keep_previous`, never a half file); a failed write (disk full,
    read-only folder) is a CnnlabError and leaves every earlier file as it was.
    """
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {**metadata, CHECKSUM_KEY: tensor_checksum(tensors, metadata)}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
            if keep_previous is not None and path.exists():
                with open(tmp, "rb") as f:  # the new file is durable before the old moves
                    os.fsync(f.fileno())
                os.replace(path, keep_previous)
    except OSError as e:
        raise CnnlabError(f"cannot write {what} ({e.strerror or e})", path) from None
    return path


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights + embedded model JSON to a self-contained `.safetensors` file."""
    return write_safetensors(path, _state_tensors(model), {META_KEY: json.dumps(meta)})


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """The optimizer state as `optimizer.<pid>.<name>` tensors + JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, json.dumps(
        {
            "class": type(optimizer).__name__,
            "param_groups": state["param_groups"],
            "scalars": scalars,
        }
    )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], optim_json: str
) -> None:
    """Put the state written by `optimizer_tensors` back into `optimizer` (same class)."""
    saved = json.loads(optim_json)
    if saved["class"] != type(optimizer).__name__:
        raise ValueError(f"checkpoint holds {saved['class']} state, not {type(optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            pid, name = key[len("optimizer.") :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in saved["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    # give each moment its parameter's memory layout: the fused CPU Adam of torch 2.13 updates
    # a channels_last parameter wrongly from a (saved, contiguous) NCHW moment
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    optimizer.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def save_last(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    *,
    epoch: int,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, str] | None = None,
) -> Path:
    """Model + optimizer state after `epoch` (1-based), for resuming a run later.

    `extra_tensors` / `extra_meta` carry the rest of the training state (cnnlab.train.resume);
    the checkpoint this one replaces is kept beside it as `previous.safetensors`.
    """
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in _state_tensors(model).items()}
    opt_tensors, opt_json = optimizer_tensors(optimizer)
    optim_meta = {**json.loads(opt_json), "epoch": epoch}
    return write_safetensors(
        path,
        {**tensors, **opt_tensors, **(extra_tensors or {})},
        {META_KEY: json.dumps(meta), OPTIM_KEY: json.dumps(optim_meta), **(extra_meta or {})},
        what="checkpoint",
        keep_previous=path.with_name(PREVIOUS_FILE),
    )


def disk_bytes_needed(model: nn.Module) -> int:
    """Bytes a run folder may need at its fullest, from the model's size P (an estimate).

    model.safetensors and its temporary copy (2 P) + previous, last and the new last being
    written, each weights + two Adam moments (9 P) + 1 MiB for JSON, CSV and plots.
    """
    p = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 11 * p + 2**20


def check_free_space(folder: str | Path, needed: int) -> None:
    """Refuse to start when `folder`'s disk has less than `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CnnlabError(
            f"not enough free disk space for this run: about {needed / 1e6:.1f} MB needed "
            f"(model and checkpoints), {free / 1e6:.1f} MB free",
            folder,
        )


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


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; corrupt or truncated files are errors.

    A file written by cnnlab carries a checksum (CHECKSUM_KEY) and is refused when its
    content no longer matches it; files from elsewhere without one are read as they are.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers/data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CnnlabError(f"not a readable .safetensors file ({msg})", path) from None
    expected = meta.get(CHECKSUM_KEY)
    if expected is not None and tensor_checksum(tensors, meta) != expected:
        raise CnnlabError(
            "corrupted .safetensors file: its content does not match the sha256 in its "
            "metadata (damaged on disk or edited); use an intact copy",
            path,
        )
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
        tta_symmetry(meta.get("tta"))  # evaluate / predict would trip over it later
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
    path = resolve_model_file(path)
    tensors, raw = read_safetensors(path)
    if META_KEY not in raw:
        raise CnnlabError("safetensors file without cnnlab model metadata", path)
    meta = {**json.loads(raw[META_KEY]), **fields}
    write_safetensors(path, tensors, {**raw, META_KEY: json.dumps(meta)})  # a new checksum
    beside = path.parent / "model.json"
    if path.name == MODEL_FILE and beside.is_file():
        try:
            on_disk = json.loads(beside.read_text())
        except (OSError, ValueError):
            on_disk = meta
        write_model_json(path.parent, {**on_disk, **fields})
    return meta
