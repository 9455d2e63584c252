"""A heatmap over an image: the jet colour map blended with the picture, as Grad-CAM is shown."""

from __future__ import annotations

import numpy as np

COLORMAP = "jet"  # the colour map of the Grad-CAM paper: blue = no evidence, red = most


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> uint8 HxWx3 (gray repeated, alpha dropped)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return np.ascontiguousarray(img[..., :3])
    raise ValueError(f"image must be HxW or HxWxC with C in 1, 3, 4, got shape {img.shape}")


def colorize(heat: np.ndarray) -> np.ndarray:
    """HxW values in [0, 1] -> uint8 HxWx3 colours of the jet map (values outside are clipped)."""
    from matplotlib import colormaps

    rgba = colormaps[COLORMAP](np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0))
    return np.rint(rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the coloured heatmap into the image: (1 - alpha) * image + alpha * jet(heat).

    image: uint8 HxW or HxWxC; heat: HxW floats in [0, 1] at the image's size.
    Returns uint8 HxWx3.

    Examples
    --------
    >>> out = overlay(np.zeros((2, 2), np.uint8), np.ones((2, 2)), alpha=1.0)
    >>> out[0, 0].tolist()  # jet(1.0) is dark red
    [128, 0, 0]
    """
    rgb = to_rgb(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat is {heat.shape}, the image is {rgb.shape[:2]} (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = (1.0 - alpha) * rgb + alpha * colorize(heat).astype(np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
