"""Figures for looking inside a model: kernels, feature maps and Grad-CAM overlays.

Each function returns a matplotlib Figure (cnnlab.plots.new_figure, headless); saving is
cnnlab.plots.save_figure's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnlab.explain.features import kernel_tiles, strongest_channels
from cnnlab.explain.overlay import overlay, to_rgb
from cnnlab.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlab.data.dataset import Box

MAPS_PER_BLOCK = 16  # feature maps drawn per block: the most active channels


def kernels_figure(weights: np.ndarray, *, ncols: int = 8, title: str | None = None) -> Figure:
    """One tile per first-layer kernel, all on one scale (zero = mid-gray), numbered."""
    tiles = kernel_tiles(weights)
    n = tiles.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = new_figure(figsize=(1.1 * ncols + 0.8, 1.2 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(tiles[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
    w = np.asarray(weights)
    top = float(np.abs(w).max()) if w.size else 0.0
    kind = "RGB" if w.shape[1] == 3 else ("gray" if w.shape[1] == 1 else "mean over inputs")
    fig.suptitle(
        title
        or f"{n} learned first-layer kernels, {w.shape[2]}x{w.shape[3]} ({kind}); "
        f"black = -{top:.3g}, mid-gray = 0, white = +{top:.3g}",
        fontsize=9,
    )
    return fig


def features_figure(
    image: np.ndarray,
    maps: Sequence[tuple[str, torch.Tensor | np.ndarray]],
    *,
    per_block: int = MAPS_PER_BLOCK,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """The input image, then for each block its `per_block` most active maps (C, h, w).

    Each map has its own colour scale (viridis); titles give the block and channel index.
    """
    rows_per_block = [max(1, -(-min(per_block, np.asarray(m).shape[0]) // ncols)) for _, m in maps]
    nrows = 1 + sum(rows_per_block)
    fig = new_figure(figsize=(1.3 * ncols, 1.45 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    img = to_rgb(np.asarray(image))
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("input", fontsize=7)
    row = 1
    for (name, m), nrows_b in zip(maps, rows_per_block, strict=True):
        m = np.asarray(m, dtype=np.float32)
        chosen = strongest_channels(m, per_block)
        for j, c in enumerate(chosen):
            ax = axes[row + j // ncols, j % ncols]
            ax.imshow(m[c], cmap="viridis", interpolation="nearest")
            ax.set_title(f"{name} ch{c}", fontsize=6)
        axes[row, 0].text(
            -0.15,
            0.5,
            f"{name}\n{m.shape[0]}x{m.shape[1]}x{m.shape[2]}",
            transform=axes[row, 0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
        row += nrows_b
    fig.suptitle(
        title or f"feature maps after each conv block (the {per_block} most active per block)",
        fontsize=9,
    )
    return fig


def draw_boxes(ax: object, boxes: Sequence[Box], color: str = "white") -> None:
    """Outline Pascal VOC boxes (1-based, inclusive pixel indices) on an image axis."""
    from matplotlib.patches import Rectangle

    for x0, y0, x1, y1 in boxes:
        # pixel i spans [i - 0.5, i + 0.5] in imshow coordinates; box pixels are x0-1..x1-1
        ax.add_patch(  # type: ignore[attr-defined]
            Rectangle((x0 - 1.5, y0 - 1.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec=color, lw=1)
        )


def gradcam_figure(
    image: np.ndarray,
    heat: np.ndarray,
    title: str,
    *,
    boxes: Sequence[Box] | None = None,
    alpha: float = 0.45,
) -> Figure:
    """Two panels: the image as the model saw it, and the Grad-CAM heatmap over it."""
    fig = new_figure(figsize=(6.4, 3.6))
    ax_img, ax_cam = fig.subplots(1, 2)
    ax_img.imshow(to_rgb(image), interpolation="nearest")
    ax_img.set_title("input", fontsize=8)
    ax_cam.imshow(overlay(image, heat, alpha), interpolation="nearest")
    ax_cam.set_title("Grad-CAM", fontsize=8)
    for ax in (ax_img, ax_cam):
        ax.axis("off")
        if boxes:
            draw_boxes(ax, boxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def gradcam_grid(
    images: Sequence[np.ndarray],
    heats: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    boxes: Sequence[Sequence[Box] | None] | None = None,
    ncols: int = 4,
    alpha: float = 0.45,
    suptitle: str | None = None,
) -> Figure:
    """A grid of Grad-CAM overlays with titles (and annotated boxes when given)."""
    n = max(len(images), 1)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = new_figure(figsize=(2.6 * ncols, 2.9 * nrows + (0.4 if suptitle else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(overlay(images[i], heats[i], alpha), interpolation="nearest")
        ax.set_title(titles[i], fontsize=7)
        if boxes is not None and boxes[i]:
            draw_boxes(ax, boxes[i])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig
