"""What `cnnlab data info` and `cnnlab data show` say about a loaded dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import ImageDataset
from cnnlab.plots import image_grid, save_figure


def dataset_info(ds: ImageDataset) -> dict[str, Any]:
    """Layout, classes with counts per split, image size and mode, and problems/notes found.

    >>> import torch
    >>> ds = ImageDataset(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), torch.tensor([0, 1]),
    ...                   ["a", "b"], ["x.png", "y.png"])
    >>> info = dataset_info(ds)
    >>> info["image_size"], info["mode"], info["splits"]["all"]
    ([4, 5], 'gray', {'a': 1, 'b': 1})
    """
    info = ds.summary()
    info["mode"] = {1: "gray", 3: "RGB"}.get(ds.channels, f"{ds.channels} channels")
    info["dtype"] = "uint8"
    info["boxes"] = sum(len(b) for b in ds.boxes.values())
    info["images_with_boxes"] = len(ds.boxes)
    info["notes"] = list(ds.notes)
    return info


def format_info(info: dict[str, Any]) -> str:
    """The info dict as an aligned text table for the terminal."""
    splits = list(info["splits"])
    names = info["class_names"]
    width = max([len("class"), *(len(c) for c in names)])
    lines = [
        f"root:    {info['root']}",
        f"layout:  {info['layout']}",
        f"images:  {info['n']}, {info['image_size'][0]}x{info['image_size'][1]} (H x W), "
        f"{info['mode']}, {info['dtype']}",
    ]
    if info.get("boxes"):
        lines.append(f"boxes:   {info['boxes']} on {info['images_with_boxes']} images")
    lines.append("")
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    for c in names:
        lines.append(f"{c:<{width}}  " + "  ".join(f"{info['splits'][s][c]:>6}" for s in splits))
    totals = [sum(info["splits"][s].values()) for s in splits]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{t:>6}" for t in totals))
    for note in info.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def sample_grid(
    ds: ImageDataset, path: str | Path, *, per_class: int = 8, split: str = "all", seed: int = 0
) -> Path:
    """Save a grid with `per_class` random images of each class (one row per class)."""
    part = ds.split(split)
    rng = np.random.default_rng(seed)
    labels = part.labels.numpy()
    images, titles = [], []
    for k, name in enumerate(part.class_names):
        idx = np.flatnonzero(labels == k)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        row = [part.images[i].permute(1, 2, 0).numpy() for i in pick]
        images += row + [np.zeros_like(row[0])] * (per_class - len(row)) if row else []
        titles += [name] * len(row) + [""] * (per_class - len(row)) if row else []
    fig = image_grid(images, titles, ncols=per_class, suptitle=f"{Path(ds.root).name}: {split}")
    return save_figure(fig, path)
