"""The decoded-dataset cache: one safetensors file per key in `$CNNLAB_CACHE`, no pickle.

The file holds the decoded images (uint8 N,C,H,W) and the indices of the decoded entries;
the JSON metadata (boxes, notes) rides in the safetensors header. It is written atomically,
so a crash leaves either the whole entry or none; an unreadable entry is ignored and rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cnnlab.atomic import atomic_path
from cnnlab.data.dataset import Box
from cnnlab.paths import cache_root

FORMAT_VERSION = 1  # bump when the decoded pixels or the entry format change


def entry_path(key: str) -> Path:
    """Where the entry for `key` lives."""
    return cache_root() / "datasets" / f"{key}.safetensors"


def store(
    key: str,
    images: torch.Tensor,
    kept: torch.Tensor | None,
    boxes: dict[int, list[Box]],
    notes: list[str],
) -> Path | None:
    """Write one entry atomically; a cache that cannot be written is skipped, not an error."""
    from safetensors.torch import save_file

    meta = {"boxes": {str(i): [list(b) for b in bs] for i, bs in boxes.items()}, "notes": notes}
    tensors = {"images": images.contiguous()}
    if kept is not None:
        tensors["kept"] = kept.contiguous()
    path = entry_path(key)
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"cnnlab": json.dumps(meta)})
    except OSError:
        return None
    return path


def load(
    key: str,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, list[Box]], list[str]] | None:
    """The entry for `key` as (images, kept, boxes, notes), or None when absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["cnnlab"])
            images = f.get_tensor("images")
            kept = f.get_tensor("kept") if "kept" in f.keys() else None
    except (OSError, KeyError, ValueError, SafetensorError):
        return None
    boxes = {int(i): [tuple(b) for b in bs] for i, bs in meta["boxes"].items()}
    return images, kept, boxes, list(meta["notes"])  # type: ignore[return-value]
