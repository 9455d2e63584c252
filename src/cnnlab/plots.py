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
    # constrained layout leaves room for the per-image titles under the suptitle
    fig = new_figure(
        figsize=(cell * ncols, cell * nrows + (0.4 if suptitle else 0)), layout="constrained"
    )
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


def training_curves(history: Sequence[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and (when present) validation, side by side."""
    fig = new_figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) for r in history]
    for key, ax, label in (("loss", ax_loss, "loss"), ("accuracy", ax_acc, "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            vals = [r.get(f"{split}_{key}") for r in history]
            if any(v not in (None, "") for v in vals):
                ax.plot(
                    epochs,
                    [float("nan") if v in (None, "") else float(v) for v in vals],
                    style,
                    label=split,
                    markersize=3,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Two panels: the confusion matrix in counts and normalised per true class (rows)."""
    cm = np.asarray(cm)
    k = len(class_names)
    size = max(4.0, 0.45 * k + 2)
    fig = new_figure(figsize=(2 * size + 1, size))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    for ax, data, title, fmt in (
        (fig.add_subplot(1, 2, 1), cm, "counts", "d"),
        (fig.add_subplot(1, 2, 2), norm, "normalised by true class", ".2f"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        if k <= 20:
            top = data.max() if data.size else 0
            for i in range(k):
                for j in range(k):
                    v = data[i, j]
                    ax.text(
                        j,
                        i,
                        format(v, fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if top and v > top / 2 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def prediction_figure(
    image: np.ndarray,
    probs: Sequence[float],
    class_names: Sequence[str],
    *,
    true_label: str | None = None,
    title: str | None = None,
) -> Figure:
    """The notes' figure: the image beside a stem plot of the class probabilities."""
    return predictions_figure(
        [image], [probs], class_names, true_labels=[true_label], titles=[title]
    )


def predictions_figure(
    images: Sequence[np.ndarray],
    probs: Sequence[Sequence[float]],
    class_names: Sequence[str],
    *,
    true_labels: Sequence[str | None] | None = None,
    titles: Sequence[str | None] | None = None,
) -> Figure:
    """One row per image: the image (HxW, CxHxW or HxWxC) and its probability stem plot."""
    n = max(len(images), 1)
    fig = new_figure(figsize=(9, 4 * n if n == 1 else 3 * n))
    axes = fig.subplots(n, 2, squeeze=False, gridspec_kw={"width_ratios": [1, 1.25]})
    for i, (img, p) in enumerate(zip(images, probs, strict=True)):
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
            img = img.transpose(1, 2, 0)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        p = np.asarray(p, dtype=float)
        pred = int(p.argmax())
        ax_img, ax_stem = axes[i]
        ax_img.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax_img.axis("off")
        true = true_labels[i] if true_labels is not None else None
        head = f"predicted: {class_names[pred]} ({p[pred]:.1%})"
        if true is not None:
            head += f"\ntrue: {true}"
        if titles is not None and titles[i]:
            head = f"{titles[i]}\n{head}"
        ax_img.set_title(
            head, fontsize=9, color="black" if true is None or true == class_names[pred] else "red"
        )
        ax_stem.stem(range(len(p)), p)
        ax_stem.set_ylim(0, 1.05)
        ax_stem.set_xticks(
            range(len(p)),
            class_names,
            rotation=45 if len(p) > 10 or max(len(c) for c in class_names) > 3 else 0,
            ha="right" if len(p) > 10 else "center",
            fontsize=8,
        )
        ax_stem.set_ylabel("probability")
        ax_stem.grid(alpha=0.3)
    fig.tight_layout()
    return fig
