"""The check after every export: the exported file against the PyTorch model, same images.

Both sides go through `cnnlab.backends` (the same uint8 batch, the same x / 255 scaling, the
same softmax in `cnnlab.predict.probabilities`), so the difference measured is the forward
pass alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.backends import TorchPredictor, load_predictor
from cnnlab.errors import CnnlabError
from cnnlab.predict import expand_inputs, prepare_image, probabilities


def check_images(
    model_src: str | Path,
    meta: dict[str, Any],
    *,
    images: Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    n: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, str]:
    """uint8 (N, C, H, W) images at the model's size to check an export on, and their source.

    Loose files when `images` is given; else `n` images spread over the test split of `data`
    (default: the data recorded at training; never downloaded); else random pixels.
    """
    channels, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    if images:
        files = expand_inputs(images)[:n]
        arrays = [prepare_image(f, channels, size) for f in files]
        return torch.from_numpy(np.stack(arrays)), f"{len(files)} image file(s)"
    spec = data if data is not None else meta.get("trained", {}).get("data")
    if spec is not None:
        from cnnlab.data import load_dataset

        try:
            ds = load_dataset(spec, channels=channels, size=size, download=False, progress=progress)
        except CnnlabError as e:
            if data is not None:  # asked for explicitly: its failure is the user's to fix
                raise
            reason = f"training data unavailable: {e}"
        else:
            which = "test" if len(ds.split("test")) else "all"
            part = ds.split(which)
            idx = torch.linspace(0, len(part) - 1, min(n, len(part))).round().long().unique()
            return part.images[idx], f"{len(idx)} images of {spec} ({which} split)"
    else:
        reason = "the model records no training data"
    rng = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n, channels, *size), dtype=torch.uint8, generator=rng)
    return noise, f"{n} random images ({reason}; pass --images or --data for real ones)"


def check_export(
    model_src: str | Path, exported: str | Path, images_u8: torch.Tensor
) -> dict[str, Any]:
    """Largest |logit| and |probability| differences and label agreement, exported vs torch."""
    ref = TorchPredictor(model_src, device="cpu")
    got = load_predictor(exported)
    if got.meta["class_names"] != ref.meta["class_names"]:
        raise CnnlabError("exported metadata lost the class names", exported)
    a, b = ref.logits(images_u8), got.logits(images_u8)
    pa, pb = probabilities(a, ref.meta), probabilities(b, got.meta)
    return {
        "backend": got.backend,
        "n": int(images_u8.shape[0]),
        "max_abs_diff_logits": float((a - b).abs().max()),
        "max_abs_diff_probs": float(abs(pa - pb).max()),
        "labels_agree": int((pa.argmax(1) == pb.argmax(1)).sum()),
    }
