"""The one in-memory dataset every loader produces and the training engine consumes.

Images are decoded once into a uint8 tensor (N, C, H, W); batches are sliced from it and
normalised on the fly, so no per-item Dataset/DataLoader sits in the hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cnnlab.errors import CnnlabError

Box = tuple[int, int, int, int]  # (xmin, ymin, xmax, ymax) in pixels of the stored image


@dataclass
class ImageDataset:
    """Decoded images with labels, class names, source names and named splits.

    images: uint8 (N, C, H, W). labels: int64 (N,), indices into class_names.
    files: one source name per image (path relative to `root`, or "file.idx[i]"), unique.
    splits: split name ("train", "val", "test") -> int64 indices into the N images.
    boxes: Pascal VOC boxes per image (NEU-DET), in stored-image pixels; empty otherwise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    files: list[str]
    splits: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: str = "unknown"
    root: str = ""
    boxes: dict[int, list[Box]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things printed to the user (resizes, ...)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N,C,H,W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (n,) or len(self.files) != n:
            raise ValueError("images, labels and files must have the same length")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return (self.images.shape[2], self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageDataset:
        """The images of one split as a dataset of its own (splits and boxes re-indexed).

        "all" returns every image.
        """
        if name == "all":
            return self
        if name not in self.splits:
            raise CnnlabError(
                f"dataset has no '{name}' split (it has: {', '.join(self.splits) or 'none'})",
                self.root or None,
            )
        return self.subset(self.splits[name])

    def subset(self, idx: torch.Tensor) -> ImageDataset:
        """The images at `idx`, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        pos = {int(j): i for i, j in enumerate(idx.tolist())}
        return ImageDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            files=[self.files[i] for i in idx.tolist()],
            splits={},
            layout=self.layout,
            root=self.root,
            boxes={pos[i]: b for i, b in self.boxes.items() if i in pos},
            notes=list(self.notes),
        )

    def split_manifest(self) -> dict[str, list[str]]:
        """The splits by file name, to record in a run and reproduce or audit it later."""
        return {name: [self.files[i] for i in idx.tolist()] for name, idx in self.splits.items()}

    def with_split_manifest(self, manifest: dict[str, list[str]]) -> ImageDataset:
        """Re-apply splits recorded by file name; files missing from this dataset are an error."""
        index = {f: i for i, f in enumerate(self.files)}
        splits = {}
        for name, names in manifest.items():
            missing = [f for f in names if f not in index]
            if missing:
                raise CnnlabError(
                    f"recorded '{name}' split names {len(missing)} file(s) not in this dataset, "
                    f"e.g. {missing[0]}",
                    self.root or None,
                )
            splits[name] = torch.tensor([index[f] for f in names], dtype=torch.int64)
        return ImageDataset(
            self.images,
            self.labels,
            list(self.class_names),
            list(self.files),
            splits,
            self.layout,
            self.root,
            dict(self.boxes),
            list(self.notes),
        )

    def summary(self) -> dict[str, Any]:
        """Counts per class and split, for `data info` and run records."""
        out: dict[str, Any] = {
            "layout": self.layout,
            "root": self.root,
            "n": len(self),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "class_names": list(self.class_names),
            "splits": {},
        }
        for name, idx in {"all": torch.arange(len(self)), **self.splits}.items():
            counts = torch.bincount(self.labels[idx], minlength=self.num_classes).tolist()
            out["splits"][name] = dict(zip(self.class_names, counts, strict=True))
        return out
