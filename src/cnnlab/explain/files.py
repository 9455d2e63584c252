"""Looking inside a trained run from files: kernels, feature maps and Grad-CAM figures.

What `cnnlab show` and `cnnlab explain IMAGE...` call. Image files become model input through
`cnnlab.predict.prepare_image` and `cnnlab.train.engine.to_input`, exactly as in
`predict` and training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError


def _save(fig: Any, path: Path) -> Path:
    from cnnlab.plots import save_figure

    try:
        return save_figure(fig, path)
    except (OSError, ValueError) as e:
        raise CnnlabError(f"cannot write the figure ({e})", path) from None


def show_kernels(model_src: str | Path, out: str | Path) -> dict[str, Any]:
    """Draw the first conv layer's learned kernels to `out` (PNG, SVG or PDF).

    Examples
    --------
    >>> show_kernels("runs/neu", "kernels.png")["kernels"]  # doctest: +SKIP
    32
    """
    from cnnlab.explain.features import first_conv, kernel_weights
    from cnnlab.explain.figures import kernels_figure
    from cnnlab.train.checkpoint import load_model

    model, meta = load_model(model_src)
    w = kernel_weights(model)
    conv = first_conv(model)
    name = next(n for n, m in model.named_modules() if m is conv)
    fig = kernels_figure(w)
    path = _save(fig, Path(out))
    return {
        "file": str(path),
        "layer": name,
        "kernels": int(w.shape[0]),
        "weight_shape": list(w.shape),
        "architecture": meta.get("architecture"),
    }


def show_features(
    model_src: str | Path,
    image: str | Path,
    out: str | Path,
    *,
    layers: Sequence[str] | None = None,
    per_block: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Draw the feature maps after each conv block (or after `layers`) for one image file."""
    from cnnlab.explain.features import feature_maps
    from cnnlab.explain.figures import MAPS_PER_BLOCK, features_figure
    from cnnlab.predict import prepare_image
    from cnnlab.runtime import setup
    from cnnlab.train.checkpoint import load_model
    from cnnlab.train.engine import to_input

    if per_block is not None and per_block <= 0:
        raise CnnlabError(f"--per-block must be a positive integer, got {per_block}")
    model, meta = load_model(model_src)
    channels, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    arr = prepare_image(image, channels, size)  # (C, H, W) uint8
    rt = setup(device, bf16=False)  # float32: heatmaps and maps as exported models compute them
    model = rt.place(model)
    x = to_input(torch.tensor(arr)[None].to(rt.device), rt)
    maps = [(n, t[0]) for n, t in feature_maps(model, x, layers=layers)]
    fig = features_figure(
        arr.transpose(1, 2, 0),
        maps,
        per_block=per_block or MAPS_PER_BLOCK,
        title=f"{Path(image).name}: feature maps after each "
        f"{'chosen layer' if layers else 'conv block'} (most active first)",
    )
    path = _save(fig, Path(out))
    return {
        "file": str(path),
        "image": str(image),
        "blocks": [{"name": n, "shape": list(t.shape)} for n, t in maps],
    }


def _output_name(f: Path, used: set[str]) -> str:
    name, k = f"{f.stem}-gradcam.png", 2
    while name in used:  # same stem from two folders: keep both
        name, k = f"{f.stem}-{k}-gradcam.png", k + 1
    used.add(name)
    return name


def explain_files(
    model_src: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    class_name: str | None = None,
    layer: str | None = None,
    alpha: float = 0.45,
    device: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Grad-CAM figure per image file (folders expand): DIR/<stem>-gradcam.png.

    Each result holds "file", "label" and "probability" (the prediction), "explained" and
    "explained_probability" (the class the heatmap is for: the predicted one, or
    `class_name`), "peak" (row, col) and "output"; or "error" for an unreadable file.
    """
    from cnnlab.explain.figures import gradcam_figure
    from cnnlab.explain.gradcam import default_layer, find_layer, grad_cam_images
    from cnnlab.explain.localise import peak
    from cnnlab.predict import read_inputs
    from cnnlab.train.checkpoint import load_model
    from cnnlab.train.engine import to_input

    if not 0.0 <= alpha <= 1.0:
        raise CnnlabError(f"--alpha must lie in [0, 1], got {alpha}")
    model, meta = load_model(model_src)
    classes = list(meta["class_names"])
    if class_name is not None and class_name not in classes:
        raise CnnlabError(f"--class: the model has no class '{class_name}' ({', '.join(classes)})")
    channels, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    results, arrays, ok = read_inputs(inputs, channels, size)
    if not arrays:
        return results
    images = torch.from_numpy(np.stack(arrays))
    target_layer = find_layer(model, layer) if layer else default_layer(model, to_input(images[:1]))
    targets = None if class_name is None else np.full(len(arrays), classes.index(class_name))
    heats, probs = grad_cam_images(
        model, images, targets=targets, layer=target_layer, device=device, progress=progress
    )
    out_dir = Path(out_dir)
    used: set[str] = set()
    for i, arr, heat, p in zip(ok, arrays, heats, probs, strict=True):
        f = Path(results[i]["file"])
        pred = int(p.argmax())
        shown = pred if class_name is None else classes.index(class_name)
        title = f"{f.name}: predicted {classes[pred]} ({p[pred]:.1%})"
        if shown != pred:
            title += f"\nheatmap for {classes[shown]} ({p[shown]:.1%})"
        out = _save(
            gradcam_figure(arr.transpose(1, 2, 0), heat, title, alpha=alpha),
            out_dir / _output_name(f, used),
        )
        results[i].update(
            {
                "label": classes[pred],
                "probability": float(p[pred]),
                "explained": classes[shown],
                "explained_probability": float(p[shown]),
                "peak": list(peak(heat)),
                "output": str(out),
            }
        )
    return results
