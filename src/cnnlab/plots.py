"""Figures shared by every command: a headless matplotlib, atomic saving, image grids.

matplotlib is imported inside the functions (it is slow to import and the CLI must start fast).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure on the Agg backend, never touching a display."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure atomically (PNG, SVG or PDF by suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    cell: float = 1.6,
    suptitle: str | None = None,
    title_colors: Sequence[str] | None = None,
    cmap: str = "gray",
) -> Figure:
    """A grid of images (HxW, HxWx1 or HxWx3 arrays) with optional per-image titles."""
    n = max(len(images), 1)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure(figsize=(cell * ncols, cell * nrows + (0.4 if suptitle else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        img = np.asarray(images[i])
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None)
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(titles[i], fontsize=7, color=color)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
