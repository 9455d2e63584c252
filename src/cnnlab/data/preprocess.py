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
    if arr.shape[2] == 1:
        plane = Image.fromarray(arr[..., 0]).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(plane)[..., None]
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))


def to_model_input(arr: np.ndarray, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decoded uint8 image (HxW or HxWxC) -> uint8 (C, H, W) with the model's channels and size."""
    gray_to_rgb = channels == 3 and (arr.ndim == 2 or arr.shape[2] == 1)
    out = to_channels(arr, 1 if gray_to_rgb else channels)  # resize one plane, then repeat
    if size is not None:
        out = resize(out, size)
    if gray_to_rgb:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
