"""Shared fixtures for the training tests: a synthetic bars dataset and a tiny trained run.

Class decides a simple pattern (a bright horizontal, vertical or diagonal line on noise), so
a CNN must learn it quickly and any accuracy well above chance proves real learning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.dataset import ImageDataset
from cnnlab.images import write_image

CLASSES = ("horizontal", "vertical", "diagonal")


def bar_image(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """HxW uint8: dark noise with one bright line whose direction is the class."""
    img = rng.integers(0, 70, (size, size), dtype=np.uint8)
    k = int(rng.integers(2, size - 2))
    if kind == 0:
        img[k, :] = 255
    elif kind == 1:
        img[:, k] = 255
    else:
        np.fill_diagonal(img, 255)
        img = np.roll(img, k - size // 2, axis=1)
    return img


def bars_dataset(
    n: int = 240, size: int = 16, *, classes: int = 3, seed: int = 0, val: bool = True
) -> ImageDataset:
    """An ImageDataset of n bar images with train / (val) / test splits (60/20/20)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = np.stack([bar_image(int(c), size, rng) for c in labels])[:, None]
    a, b = int(0.6 * n), int(0.8 * n)
    splits = {"train": torch.arange(0, a), "test": torch.arange(b, n)}
    if val:
        splits["val"] = torch.arange(a, b)
    else:
        splits["train"] = torch.arange(0, b)
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(CLASSES[:classes]),
        files=[f"{CLASSES[c]}/img{i:04d}.png" for i, c in enumerate(labels)],
        splits=splits,
        layout="synthetic",
        root="synthetic",
    )


def write_bars_folder(root: Path, n_per_class: int = 40, size: int = 16, seed: int = 0) -> Path:
    """A class-per-folder tree of PNG bar images, for the CLI and loader round trips."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        for i in range(n_per_class):
            write_image(root / name / f"{name}{i:03d}.png", bar_image(c, size, rng))
    return root


_RUNS: dict[tuple, Path] = {}  # one tiny run per test process, shared by modules


def train_tiny_run(
    out: Path,
    *,
    epochs: int = 3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Path:
    """Train seed-mnist (at 16x16, 3 classes) on bars for a few seconds; returns the run dir.

    `overrides`: other TrainConfig fields (e.g. augment="flips", tta=True). The first call in
    a test process trains into `out`; later calls with the same settings return that run
    (tests only read it). With `log` (which receives the run's lines) it always trains anew.
    """
    from cnnlab.train import TrainConfig, train

    key = (epochs, seed, *sorted(overrides.items()))
    if log is None and key in _RUNS and (_RUNS[key] / "model.safetensors").is_file():
        return _RUNS[key]
    cfg = TrainConfig(
        data="synthetic",
        model="seed-mnist",
        epochs=epochs,
        batch_size=20,
        seed=seed,
        val_split=0.2,
        out=str(out),
        device="cpu",
        **overrides,
    )
    train(cfg, bars_dataset(), progress=False, log=log or (lambda _m: None))
    if log is None:
        _RUNS[key] = out
    return out
