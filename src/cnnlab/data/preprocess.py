"""One preprocessing path from a decoded image to the model's uint8 input.

Loading a dataset, `predict` on loose files and every export backend call this same code,
so a model cannot see differently prepared pixels at training and at inference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """HxW or HxWxC uint8 -> HxWx`channels` (gray by ITU-R 601 luma, gray repeated to RGB)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[2]
    if c == channels:
        return arr
    if channels == 1 and c in (3, 4):
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., :3])).convert("L"))[
            ..., None
        ]
    if channels == 3 and c == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 3 and c == 4:
        return arr[..., :3]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC uint8 -> (H', W', C) with Pillow's antialiased bilinear filter; no-op at size."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    planes = [
        np.asarray(Image.fromarray(arr[..., i]).resize((w, h), Image.Resampling.BILINEAR))
        for i in range(arr.shape[2])
    ]
    return np.stack(planes, axis=2)


def to_model_input(arr: np.ndarray, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decoded uint8 image (HxW or HxWxC) -> uint8 (C, H, W) with the model's channels and size."""
    out = to_channels(arr, channels)
    if size is not None:
        out = resize(out, size)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
