"""Accuracy under corrupted images: brightness, contrast, noise, blur and small shifts.

A line camera sees parts under changing light, focus and position. Each corruption maps a
uint8 batch (N, C, H, W) to a uint8 batch of the same shape, deterministically (the noise
comes from a seeded generator), at severities 1..3; pixels are computed in float, rounded
half to even and clipped to 0..255. `corruption_accuracy` runs a model (any function from
uint8 images to logits or probabilities) on every corruption and severity. The parameters
of each severity are in SEVERITIES, with their units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.progress import progress_bar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SEVERITIES: dict[str, tuple[float, ...]] = {
    "brightness": (0.1, 0.2, 0.3),  # added to every pixel, fraction of 255 (brighter)
    "contrast": (0.75, 0.5, 0.25),  # factor on each pixel's distance from its image's mean
    "gaussian_noise": (0.04, 0.08, 0.16),  # std of added N(0, s^2) noise, fraction of 255
    "blur": (0.5, 1.0, 2.0),  # Gaussian sigma in pixels (edge pixels repeated at the border)
    "shift": (0.03, 0.06, 0.12),  # move down and right by this fraction of H and W, rounded,
    # at least 1 pixel; the uncovered border repeats the edge row / column
}

BLUR_TRUNCATE = 4.0  # Gaussian kernel radius = int(4 sigma + 0.5), as scipy.ndimage


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def brightness(images: torch.Tensor, shift: float) -> torch.Tensor:
    """Add `shift` x 255 to every pixel (clipped)."""
    return _to_u8(images.float() + shift * 255.0)


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale each pixel's distance from its image's mean (over C, H, W) by `factor`."""
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _to_u8((x - mean) * factor + mean)


def gaussian_noise(
    images: torch.Tensor, std: float, *, seed: int = 0, first: int = 0
) -> torch.Tensor:
    """Add N(0, (std x 255)^2) noise per pixel; image i's noise comes from NumPy's generator
    seeded with [seed, first + i].

    So a set gives the same result whole or in chunks (pass each chunk's first index).
    """
    shape = tuple(images.shape[1:])
    if images.shape[0] == 0:
        return images.clone()
    noise = np.stack(
        [
            np.random.default_rng([seed, first + i]).standard_normal(shape, dtype=np.float32)
            for i in range(images.shape[0])
        ]
    ).reshape(images.shape)
    return _to_u8(images.float() + torch.from_numpy(noise) * (std * 255.0))


def gaussian_kernel1d(sigma: float, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """Normalised 1-D Gaussian exp(-x^2 / (2 sigma^2)), radius int(truncate sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in pixels), border pixels repeated ("nearest")."""
    k = gaussian_kernel1d(sigma).float()
    r = (k.numel() - 1) // 2
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w)
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))  # along W; symmetric kernel, so no flip needed
    x = F.conv2d(x, k.view(1, 1, -1, 1))  # along H
    return _to_u8(x.reshape(n, c, h, w))


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content down by dy and right by dx pixels, repeating the top / left edge."""
    h, w = images.shape[-2:]
    if dy >= h or dx >= w or dy < 0 or dx < 0:
        raise ValueError(f"shift ({dy}, {dx}) must be non-negative and smaller than {h}x{w}")
    x = F.pad(images.float(), (dx, 0, dy, 0), mode="replicate")
    return x[..., :h, :w].to(torch.uint8)


def shift_pixels(fraction: float, size: int) -> int:
    """A shift of `fraction` of `size` pixels, rounded, at least 1."""
    return max(1, round(fraction * size))


def corrupt(
    images: torch.Tensor, name: str, severity: int, *, seed: int = 0, first: int = 0
) -> torch.Tensor:
    """Corruption `name` at `severity` (1-based) of uint8 images (N, C, H, W).

    `first` is the index of images[0] in the whole set (it picks the noise of each image).
    """
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption '{name}' (known: {', '.join(SEVERITIES)})")
    levels = SEVERITIES[name]
    if not 1 <= severity <= len(levels):
        raise ValueError(f"severity must be 1..{len(levels)}, got {severity}")
    s = levels[severity - 1]
    if name == "brightness":
        return brightness(images, s)
    if name == "contrast":
        return contrast(images, s)
    if name == "gaussian_noise":
        return gaussian_noise(images, s, seed=seed * 100 + severity, first=first)
    if name == "blur":
        return blur(images, s)
    h, w = images.shape[-2:]
    return shift(images, shift_pixels(s, h), shift_pixels(s, w))


def corruption_accuracy(
    predict: Callable[[torch.Tensor], np.ndarray | torch.Tensor],
    images: torch.Tensor,
    labels: np.ndarray,
    *,
    clean_accuracy: float | None = None,
    seed: int = 0,
    chunk: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of `predict` (uint8 images -> scores (N, K)) on every corruption x severity.

    Images are corrupted `chunk` at a time, so memory stays at one chunk's copy. Returns
    {"clean_accuracy", "seed", "severities": {name: params}, "accuracy": {name: [acc per
    severity]}, "mean_corrupted_accuracy"}.
    """
    labels = np.asarray(labels)
    n = images.shape[0]

    def accuracy(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> float:
        right = 0
        for start in range(0, n, chunk):
            scores = np.asarray(predict(fn(images[start : start + chunk], start)))
            right += int((scores.argmax(1) == labels[start : start + chunk]).sum())
        return right / n if n else float("nan")

    if clean_accuracy is None:
        clean_accuracy = accuracy(lambda x, _first: x)
    table: dict[str, list[float]] = {}
    jobs = [(name, s) for name, levels in SEVERITIES.items() for s in range(1, len(levels) + 1)]
    with progress_bar(desc="corruptions", enabled=progress, total=len(jobs), unit="set") as bar:
        for name, sev in jobs:
            table.setdefault(name, []).append(
                accuracy(
                    lambda x, first, name=name, sev=sev: corrupt(
                        x, name, sev, seed=seed, first=first
                    )
                )
            )
            bar.update(1)
    all_acc = [a for accs in table.values() for a in accs]
    return {
        "clean_accuracy": float(clean_accuracy),
        "seed": seed,
        "severities": {k: list(v) for k, v in SEVERITIES.items()},
        "accuracy": table,
        "mean_corrupted_accuracy": float(np.mean(all_acc)) if all_acc else math.nan,
    }


def robustness_figure(
    results: Mapping[str, Mapping[str, Any]], *, title: str | None = None
) -> Figure:
    """Accuracy over severity (0 = clean), one panel per corruption, one line per model.

    `results` maps a model's name to `corruption_accuracy`'s dict, to compare models.
    """
    from cnnlab.plots import new_figure

    names = list(SEVERITIES)
    fig = new_figure(figsize=(3.0 * len(names), 3.2))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for label, r in results.items():
            accs = [r["clean_accuracy"], *r["accuracy"][name]]
            ax.plot(range(len(accs)), accs, "-o", markersize=4, label=label)
        levels = SEVERITIES[name]
        ax.set_xticks(range(len(levels) + 1), ["clean", *(f"{v:g}" for v in levels)], fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("severity parameter")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.02)
    if len(results) > 1:
        axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def corruption_examples_figure(image: torch.Tensor, *, seed: int = 0) -> Figure:
    """One uint8 image (C, H, W) under every corruption (rows) and severity (columns).

    Drawn on the fixed 0..255 scale, so brightness and contrast changes show as they are.
    """
    from cnnlab.plots import new_figure

    n_sev = max(len(v) for v in SEVERITIES.values())
    fig = new_figure(figsize=(2.0 * (n_sev + 1), 2.1 * len(SEVERITIES)))
    axes = fig.subplots(len(SEVERITIES), n_sev + 1, squeeze=False)
    for row, (name, levels) in zip(axes, SEVERITIES.items(), strict=True):
        for col, ax in enumerate(row):
            ax.axis("off")
            if col > len(levels):
                continue
            x = image if col == 0 else corrupt(image[None], name, col, seed=seed)[0]
            img = x.permute(1, 2, 0).numpy()
            gray = img.shape[2] == 1
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
            ax.set_title("clean" if col == 0 else f"{name} {levels[col - 1]:g}", fontsize=8)
    fig.tight_layout()
    return fig
