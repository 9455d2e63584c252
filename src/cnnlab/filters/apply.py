"""Filtering images: kernels from the bank applied as true convolutions, display scaling, files.

Data flow: image file -> `read_image` (uint8/uint16, HxW or HxWx3) -> float64 -> `filter_image`
(per channel, `cnnlab.signal.convolve2d`) -> raw float result (optionally saved as .npy) ->
`to_display` (uint8/uint16 at the input's bit depth) -> image file / gallery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cnnlab.atomic import atomic_path
from cnnlab.errors import CnnlabError
from cnnlab.filters.bank import OPERATIONS, SOBEL_X, get_kernel
from cnnlab.images import is_image_file, read_image, write_image

# torch (behind cnnlab.signal) is imported where the filtering happens, so that listing and
# checking kernels, and refusing bad input, stay fast
MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "reflect", "wrap")

Scaling = Literal["clip", "minmax", "abs", "none"]
SCALINGS = ("clip", "minmax", "abs", "none")


@dataclass
class FilterResult:
    """One filter applied to one image."""

    name: str  # the spec as given ("box:7", "sobel-magnitude", a file stem, "custom")
    raw: np.ndarray  # float64 result, HxW or HxWx3
    display: np.ndarray  # uint8 / uint16 image for viewing
    outputs: list[Path] = field(default_factory=list)


def filter_image(
    image: np.ndarray, kernel, *, mode: str = "same", boundary: str = "reflect"
) -> np.ndarray:
    """Convolve a gray (HxW) or colour (HxWxC, per channel) image with a kernel spec or array.

    Parameters
    ----------
    image : HxW or HxWxC array (any real dtype; computed in float64)
    kernel : a bank name ("sobel-x", "box:7", "sobel-magnitude"), file, inline text or array
    mode : "same" (HxW out), "valid" (no border: (H-kh+1)x(W-kw+1), as the notes) or "full"
    boundary : for "same"/"full": "fill" (zeros), "reflect" (edge pixel repeated:
        ``d c b a | a b c d``, scipy.signal "symm") or "wrap" (periodic)

    Returns
    -------
    float64 array: the true convolution (scipy.signal.convolve2d semantics).

    Examples
    --------
    >>> img = np.tile(np.arange(6.0), (4, 1))  # brightness increases to the right
    >>> filter_image(img, "sobel-x", mode="valid")
    array([[8., 8., 8., 8.],
           [8., 8., 8., 8.]])
    """
    from cnnlab.signal.convolve import convolve2d

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise CnnlabError(f"image must be a non-empty HxW or HxWxC array, got shape {image.shape}")
    if mode not in MODES:
        raise CnnlabError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if boundary not in BOUNDARIES:
        raise CnnlabError(f"unknown boundary {boundary!r}: use one of {', '.join(BOUNDARIES)}")
    img = image.astype(np.float64)
    if isinstance(kernel, str) and kernel in OPERATIONS:
        gx = filter_image(img, SOBEL_X, mode=mode, boundary=boundary)
        gy = filter_image(img, SOBEL_X.T, mode=mode, boundary=boundary)
        return np.hypot(gx, gy)
    weights = kernel.weights if hasattr(kernel, "weights") else get_kernel(kernel).weights
    if weights.ndim == 1:
        weights = weights[None, :]
    if img.ndim == 2:
        return convolve2d(img, weights, mode, boundary=boundary)
    planes = [
        convolve2d(img[..., c], weights, mode, boundary=boundary) for c in range(img.shape[2])
    ]
    return np.stack(planes, axis=2)


def sobel_magnitude(
    image: np.ndarray, *, mode: str = "same", boundary: str = "reflect"
) -> np.ndarray:
    """Gradient magnitude sqrt(Gx^2 + Gy^2) with the Sobel kernels (per channel for colour)."""
    return filter_image(image, "sobel-magnitude", mode=mode, boundary=boundary)


def to_display(raw: np.ndarray, scaling: Scaling = "clip", dtype=np.uint8) -> np.ndarray:
    """Map a float filter result to a viewable uint8/uint16 image (one scale for all channels).

    "clip": the notes' imshow(vmin=0, vmax=max): negatives become 0, [0, max] -> [0, top].
    "minmax": [min, max] -> [0, top]. "abs": |v|, [0, max|v|] -> [0, top]. "none": the values
    themselves as intensities, rounded and clipped to [0, top] (natural for blur/sharpen).
    top is 255 for uint8, 65535 for uint16; a constant result maps to 0.
    """
    dtype = np.dtype(dtype)
    top = float(np.iinfo(dtype).max)
    v = np.asarray(raw, dtype=np.float64)
    if scaling == "none":
        out = v
    else:
        if scaling == "clip":
            v, lo = np.clip(v, 0, None), 0.0
        elif scaling == "abs":
            v, lo = np.abs(v), 0.0
        elif scaling == "minmax":
            lo = float(v.min())
        else:
            raise CnnlabError(f"unknown scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
        span = float(v.max()) - lo
        out = (v - lo) * (top / span) if span > 0 else np.zeros_like(v)
    return np.clip(np.round(out), 0, top).astype(dtype)


def apply_filters(
    image: np.ndarray,
    kernels: list[str],
    *,
    mode: str = "same",
    boundary: str = "reflect",
    scaling: Scaling = "clip",
    progress: bool = False,
) -> list[FilterResult]:
    """Apply each kernel spec to the image; all specs are resolved (and checked) before any work."""
    from cnnlab.progress import progress_bar

    if not kernels:
        raise CnnlabError("give at least one kernel")
    if scaling not in SCALINGS:
        raise CnnlabError(f"unknown scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    resolved = [(s, s if s in OPERATIONS else get_kernel(s)) for s in kernels]
    depth = np.uint16 if image.dtype == np.uint16 else np.uint8
    results = []
    for spec, kernel in progress_bar(resolved, desc="filtering", enabled=progress, unit="kernel"):
        raw = filter_image(image, kernel, mode=mode, boundary=boundary)
        name = spec if isinstance(kernel, str) else kernel.name
        results.append(FilterResult(name, raw, to_display(raw, scaling, depth)))
    return results


def filter_file(
    image: str | Path | None,
    kernels: list[str],
    *,
    out: str | Path = ".",
    mode: str = "same",
    boundary: str = "reflect",
    scaling: Scaling = "clip",
    raw: bool = False,
    gallery: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Filter an image file (None: the generated sample image) and write the results.

    Output names: with one kernel and `out` ending in an image suffix, that file; with several
    kernels and an image suffix, ``OUT_STEM_<kernel>.SUFFIX``; otherwise `out` is a folder that
    gets ``<image stem>_<kernel>.png``. `raw` adds the float64 result as .npy beside each image;
    `gallery` writes the original beside every result. Everything is computed before the first
    file is written, and each file is written atomically, so a failing run leaves no output.

    Returns a summary dict (input, shape, outputs and value range per kernel).
    """
    from cnnlab.filters.sample import sample_image

    if image is None:
        arr, stem, source = sample_image(), "sample", "<sample image>"
    else:
        arr, stem, source = read_image(image), Path(image).stem, str(image)
    results = apply_filters(
        arr, kernels, mode=mode, boundary=boundary, scaling=scaling, progress=progress
    )
    targets = _output_paths(Path(out), stem, [r.name for r in results])
    for target in targets:
        if target.exists() and target.is_dir():
            raise CnnlabError("is a folder, cannot write the filtered image there", target)
    gallery_fig = gallery_figure(arr, results) if gallery is not None else None
    for r, target in zip(results, targets, strict=True):
        r.outputs.append(write_image(target, r.display))
        if raw:
            npy = target.with_suffix(".npy")
            with atomic_path(npy) as tmp:
                np.save(tmp, r.raw, allow_pickle=False)
            r.outputs.append(npy)
    summary = {
        "input": source,
        "shape": list(arr.shape),
        "mode": mode,
        "boundary": boundary,
        "scaling": scaling,
        "results": [
            {
                "kernel": r.name,
                "outputs": [str(p) for p in r.outputs],
                "shape": list(r.raw.shape),
                "min": float(r.raw.min()),
                "max": float(r.raw.max()),
            }
            for r in results
        ],
    }
    if gallery_fig is not None:
        from cnnlab.plots import save_figure

        summary["gallery"] = str(save_figure(gallery_fig, gallery))
    return summary


def gallery_figure(image: np.ndarray, results: list[FilterResult], title: str | None = None):
    """A matplotlib figure: the original beside each filter's display image, titled by kernel."""
    from cnnlab.plots import image_grid

    images = [image, *[r.display for r in results]]
    titles = ["original", *[r.name for r in results]]
    return image_grid(images, titles, ncols=min(len(images), 3), cell=3.0, suptitle=title)


def _output_paths(out: Path, stem: str, names: list[str]) -> list[Path]:
    slugs = _unique([_slug(n) for n in names])
    if is_image_file(out):
        if len(names) == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{s}{out.suffix}") for s in slugs]
    if out.suffix and not out.exists():
        raise CnnlabError("output must be an image file (.png, .tif, ...) or a folder", out)
    return [out / f"{stem}_{s}.png" for s in slugs]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name.replace(":", "-")).strip("-.") or "kernel"


def _unique(slugs: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in slugs:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out
