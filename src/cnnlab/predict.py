"""Predict labels for loose image files or in-memory images with a trained model.

Files go through `cnnlab.images.read_image` and `cnnlab.data.preprocess.to_model_input`
(the same preprocessing as training data), so the model sees pixels prepared the same way.
A bad file is reported in its own result and the others are still predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlab.backends import load_predictor
from cnnlab.calibration import probabilities
from cnnlab.errors import CnnlabError
from cnnlab.images import is_image_file, open_image, pil_to_array
from cnnlab.reject import check_threshold
from cnnlab.runtime import setup
from cnnlab.train.engine import predict_logits

MAX_PLOTTED = 16  # images drawn by --plot


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders -> their image files (recursively, sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise CnnlabError("folder holds no image files", p)
            out.extend(found)
        else:
            out.append(p)
    return out


def image_logits(
    model: nn.Module,
    images_u8: torch.Tensor,
    *,
    device: str = "auto",
    tta: bool | str | None = False,
) -> np.ndarray:
    """Logits (N, K) for uint8 (N, C, H, W) images already at the model's size.

    `tta`: average over mirrors / rotations, as the model's JSON asks (meta["tta"]). Float32,
    as every backend (`cnnlab.backends.TorchPredictor`).
    """
    rt = setup(device, bf16=False)
    return predict_logits(rt.place(model), images_u8, runtime=rt, tta=tta).numpy()


def predict_images(
    model: nn.Module,
    images_u8: torch.Tensor,
    *,
    device: str = "auto",
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """Class probabilities (N, K) for uint8 (N, C, H, W) images already at the model's size.

    With the model's `meta`, its test-time augmentation and calibration temperature (if any)
    are applied.
    """
    tta = (meta or {}).get("tta")
    return probabilities(image_logits(model, images_u8, device=device, tta=tta), meta)


def _result(probs: np.ndarray, class_names: list[str], top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return {
        "label": class_names[int(order[0])],
        "probability": float(probs[order[0]]),
        "top_k": [{"label": class_names[int(i)], "probability": float(probs[i])} for i in order],
        "probabilities": {c: float(p) for c, p in zip(class_names, probs, strict=True)},
    }


def read_inputs(
    inputs: Sequence[str | Path], channels: int, size: tuple[int, int]
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[int]]:
    """Files and folders -> (one result dict per file, model-input arrays, indices of the
    results that have an array). A file that cannot be read gets {"file", "error"} and the
    others go on."""
    results: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    ok: list[int] = []
    for f in expand_inputs(inputs):
        try:
            arrays.append(prepare_image(f, channels, size))
            ok.append(len(results))
            results.append({"file": str(f)})
        except CnnlabError as e:
            results.append({"file": str(f), "error": str(e)})
    return results, arrays, ok


def predict_files(
    model_src: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 3,
    plot: str | Path | None = None,
    device: str = "auto",
    reject_below: float | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Label and probabilities for each image file (folders expand to their images).

    Each result holds "file" and either "label", "probability", "top_k", "probabilities"
    (and "true_label" when the parent folder is named after one of the model's classes), or
    "error" for a file that could not be read. `plot` draws the notes' image + stem figure.
    Probabilities carry the model's calibration temperature when it has one; with
    `reject_below` P, each result also gets "uncertain": top probability < P. `threads`: CPU
    threads a model call may use (default: the physical cores; 1 on a CPU shared with other
    work, README "Export and serve").

    Examples
    --------
    >>> for r in predict_files("runs/mnist", ["digit.png"]):  # doctest: +SKIP
    ...     print(r["file"], r["label"], round(r["probability"], 3))
    digit.png 7 0.998
    """
    if top_k <= 0:
        raise CnnlabError(f"--top-k must be a positive integer, got {top_k}")
    if reject_below is not None:
        reject_below = check_threshold(reject_below)
    predictor = load_predictor(model_src, device=device, threads=threads)
    meta = predictor.meta
    class_names = list(meta["class_names"])
    channels, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    results, arrays, ok = read_inputs(inputs, channels, size)
    if arrays:
        probs = probabilities(predictor.logits(torch.from_numpy(np.stack(arrays))), meta)
        for i, p in zip(ok, probs, strict=True):
            results[i].update(_result(p, class_names, min(top_k, len(class_names))))
            if reject_below is not None:
                results[i]["uncertain"] = bool(p.max() < reject_below)
            parent = Path(results[i]["file"]).parent.name
            if parent in class_names:
                results[i]["true_label"] = parent
    if plot is not None:
        if not arrays:
            raise CnnlabError("nothing to plot: no image could be read", plot)
        plot_predictions(
            plot,
            arrays[:MAX_PLOTTED],
            [np.array(list(results[i]["probabilities"].values())) for i in ok[:MAX_PLOTTED]],
            class_names,
            true_labels=[results[i].get("true_label") for i in ok[:MAX_PLOTTED]],
            titles=[Path(results[i]["file"]).name for i in ok[:MAX_PLOTTED]],
        )
    return results


def prepare_image(
    image: str | Path | Image.Image, channels: int, size: tuple[int, int]
) -> np.ndarray:
    """An image file or decoded PIL image -> uint8 (C, H, W) for the model.

    The one path from a picture to model input for every command and backend (predict,
    evaluate on files, export checks, serve): 16-bit images are scaled to 8 bits first.
    """
    path = image if isinstance(image, (str, Path)) else None
    img = open_image(image) if path is not None else image
    arr = pil_to_array(img, "keep")
    if arr.dtype != np.uint8:
        arr = pil_to_array(img, "L" if channels == 1 else "RGB")
    return to_model_input(arr, channels, size, path=path)


def to_model_input(
    arr: np.ndarray, channels: int, size: tuple[int, int], *, path: str | Path | None = None
) -> np.ndarray:
    """The one preprocessing path (cnnlab.data.preprocess), with a user-facing error."""
    from cnnlab.data.preprocess import to_model_input as prep

    try:
        return prep(arr, channels, size)
    except ValueError as e:
        raise CnnlabError(str(e), path) from None


def plot_predictions(
    path: str | Path,
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    class_names: list[str],
    *,
    true_labels: Sequence[str | None] | None = None,
    titles: Sequence[str | None] | None = None,
) -> Path:
    """Save the notes' figure (image beside a stem plot of probabilities), one row per image."""
    from cnnlab.plots import predictions_figure, save_figure

    path = Path(path)
    fig = predictions_figure(images, probs, class_names, true_labels=true_labels, titles=titles)
    try:
        return save_figure(fig, path)
    except (OSError, ValueError) as e:
        raise CnnlabError(f"cannot write the plot ({e})", path) from None
