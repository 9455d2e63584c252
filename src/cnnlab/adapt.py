"""Re-estimate a model's BatchNorm statistics on unlabelled images from new conditions.

A BatchNorm layer normalises with the mean and variance it saw in training. When the light,
the camera or the focus change, every layer's inputs move and those stored statistics no
longer fit: that, more than the weights, is why the `best` models lose accuracy under
brightness, contrast, noise and blur (README, "Confidence and robustness"). Recomputing the
statistics on a few dozen unlabelled images taken under the new conditions (test-time
BatchNorm adaptation, Schneider et al. 2020, "Improving robustness against common
corruptions by covariate shift adaptation") repairs most of it; no label and no gradient
is needed, and every weight stays as trained.

The images must be a fair mix of what the line sees: statistics taken from one defect class
alone move every class towards it (README: NEU clean accuracy 33-89% after adapting on one
class). `prior` N blends in the trained statistics as if they came from N more images
(Schneider et al.'s N), a hedge that keeps less of the gain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError

ADAPT_BATCH = 256  # images per forward pass while collecting statistics
MIN_IMAGES = 2  # a variance needs two images; README suggests 32 or more


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    images_u8: torch.Tensor,
    *,
    prior: float = 0.0,
    batch_size: int = ADAPT_BATCH,
) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are those of `images_u8`.

    uint8 (n, C, H, W) images at the model's input size go through the copy in training
    mode for the BatchNorm layers only; each layer's running mean and variance become the
    average of the per-batch statistics (with n <= batch_size: the exact mean and unbiased
    variance over all n images). With `prior` N > 0 each becomes (N x trained + n x new) /
    (N + n). Weights and the input model are unchanged.
    """
    from cnnlab.train.engine import to_input

    if not batchnorm_layers(model):
        raise ValueError("the model has no BatchNorm layers: there are no statistics to adapt")
    n = int(images_u8.shape[0])
    if n < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images to estimate statistics, got {n}")
    if not prior >= 0:
        raise ValueError(f"prior must be a number >= 0, got {prior}")
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    saved = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    # near-equal batches (sizes differ by at most one), so no batch holds a single image
    n_batches = -(-n // batch_size)
    for chunk in torch.tensor_split(torch.arange(n), n_batches):
        adapted(to_input(images_u8[chunk].cpu()))
    w = prior / (prior + n)  # the trained statistics' share
    for bn, old, momentum in zip(layers, batchnorm_layers(model), saved, strict=True):
        bn.momentum = momentum
        bn.running_mean.lerp_(old.running_mean, w)
        bn.running_var.lerp_(old.running_var, w)
    return adapted.eval()


def adapt_model(
    model_src: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    prior: float = 0.0,
) -> dict[str, Any]:
    """Adapt a saved model's BatchNorm statistics to the images in `inputs` (files and
    folders) and write the result as a new run folder `out` (model.safetensors, model.json).

    The source is never changed. A file that cannot be read is an error (nothing is
    written), as is a model without BatchNorm. Returns the "adapted" record stored in the
    new model's JSON, with "model" (the new file) added.
    """
    from cnnlab.predict import read_inputs
    from cnnlab.train.checkpoint import (
        MODEL_FILE,
        load_model,
        resolve_model_file,
        save_model,
        write_model_json,
    )

    src_file = resolve_model_file(model_src)
    model, meta = load_model(src_file)
    out_dir = Path(out)
    target = out_dir / MODEL_FILE
    if target.resolve() == src_file.resolve():
        raise CnnlabError("--out must be a new folder: the source model is kept as it is", out)
    if not batchnorm_layers(model):
        raise CnnlabError(
            f"architecture '{meta['architecture']}' has no BatchNorm layers: nothing to adapt "
            "(the lecture's seed models have none; the `best` and `fast` models do)",
            src_file,
        )
    channels, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    results, arrays, _ = read_inputs(inputs, channels, size)
    if not results:
        raise CnnlabError("no image files found", ", ".join(map(str, inputs)))
    bad = [r for r in results if "error" in r]
    if bad:
        raise CnnlabError(f"cannot read image ({bad[0]['error']})", bad[0]["file"])
    if len(arrays) < MIN_IMAGES:
        raise CnnlabError(
            f"need at least {MIN_IMAGES} images to estimate statistics, got {len(arrays)}",
            ", ".join(map(str, inputs)),
        )
    images = torch.from_numpy(np.stack(arrays))
    try:
        adapted = adapt_batchnorm(model, images, prior=prior)
    except ValueError as e:
        raise CnnlabError(str(e), src_file) from None
    record = {
        "n_images": len(arrays),
        "prior": prior,
        "inputs": [str(p) for p in inputs],
        "source_model": str(src_file),
        "batchnorm_layers": len(batchnorm_layers(adapted)),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": "BatchNorm statistics re-estimated on these unlabelled images; weights and "
        "calibration temperature as in the source model",
    }
    new_meta = {**meta, "adapted": record}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(target, adapted, new_meta)
    write_model_json(out_dir, new_meta)
    return {**record, "model": str(target)}
