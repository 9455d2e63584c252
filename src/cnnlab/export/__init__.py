"""Export a trained model (ONNX or TorchScript) and check it against PyTorch on real images.

Data flow: run folder / MODEL -> `load_model` -> exporter writes a temporary file -> that file
is loaded by its own backend (`cnnlab.backends`) and fed the same uint8 images as the
PyTorch model -> the largest difference is reported -> only a file that passes replaces OUT.

Examples
--------
>>> r = export_model("runs/mnist", "mnist.onnx")  # doctest: +SKIP
>>> r["check"]["max_abs_diff_probs"] < 1e-4  # doctest: +SKIP
True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.atomic import atomic_path
from cnnlab.errors import CnnlabError
from cnnlab.export.check import check_export, check_images
from cnnlab.train.checkpoint import load_model, resolve_model_file

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
CHECK_IMAGES = 64  # real images the exported model is compared on
CHECK_ATOL = 1e-4  # largest allowed |probability difference| against PyTorch

__all__ = ["FORMATS", "check_export", "check_images", "default_output", "export_model"]


def default_output(model_src: str | Path, fmt: str) -> Path:
    """RUN/model.onnx for a run folder; MODEL.onnx beside a .safetensors file."""
    return resolve_model_file(model_src).with_suffix(FORMATS[fmt])


def export_model(
    model_src: str | Path,
    out: str | Path | None = None,
    *,
    format: str | None = None,
    images: Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    n_check: int = CHECK_IMAGES,
    atol: float = CHECK_ATOL,
    progress: bool = True,
) -> dict[str, Any]:
    """Export `model_src` to `out` and check the file against PyTorch; returns a report.

    `format` defaults to the suffix of `out` (.onnx / .pt), else "onnx". Check images are
    `images` (files or folders), else `n_check` images of `data` (default: the data the run
    was trained on), else random pixels with a note. A check worse than `atol` (largest
    |probability difference|) is an error and leaves `out` untouched.
    """
    from cnnlab.export.onnx import export_onnx
    from cnnlab.export.torchscript import export_torchscript

    if format is None:
        by_suffix = {v: k for k, v in FORMATS.items()}
        format = by_suffix.get(Path(out).suffix.lower(), "onnx") if out is not None else "onnx"
    if format not in FORMATS:
        raise CnnlabError(f"--format must be one of {', '.join(FORMATS)}, got '{format}'")
    if n_check < 1:
        raise CnnlabError(f"--check-images must be a positive integer, got {n_check}")
    if not atol > 0:
        raise CnnlabError(f"--atol must be positive, got {atol}")
    out = Path(out) if out is not None else default_output(model_src, format)
    if out.suffix.lower() != FORMATS[format]:
        raise CnnlabError(f"a {format} file needs the suffix {FORMATS[format]}", out)
    model, meta = load_model(model_src)
    batch, source = check_images(
        model_src, meta, images=images, data=data, n=n_check, progress=progress
    )
    exporter = export_onnx if format == "onnx" else export_torchscript
    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        exporter(model, meta, tmp)
        seconds = time.perf_counter() - t0
        check = check_export(model_src, tmp, batch)
        check.update(
            {"images": source, "atol": atol, "passed": check["max_abs_diff_probs"] <= atol}
        )
        if not check["passed"]:
            raise CnnlabError(
                f"exported model disagrees with PyTorch: largest probability difference "
                f"{check['max_abs_diff_probs']:.3g} > --atol {atol:g} on {source}; not written",
                out,
            )
    return {
        "path": str(out),
        "format": format,
        "model": str(model_src),
        "bytes": out.stat().st_size,
        "export_seconds": round(seconds, 3),
        "check": check,
    }
