"""A generated demo image (no download, no Lena) and the notes' filter gallery on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.filters.apply import FilterResult, filter_image, gallery_figure, to_display

# The notes' four kernels (in their order) plus the Sobel gradient magnitude.
DEMO_KERNELS = ("edge-horizontal", "edge-vertical", "box:5", "sharpen", "sobel-magnitude")
DEMO_TITLES = (
    "Horizontal Edge Detector",
    "Vertical Edge Detector",
    "Blurring",
    "Sharpening",
    "Sobel magnitude",
)


def sample_image(size: int = 256) -> np.ndarray:
    """A deterministic size x size uint8 grayscale test card.

    Left-to-right gradient background, a bright disc, a dark square, a triangle, vertical and
    horizontal stripes and a fine checker/noise texture: edges in every direction, so edge
    detectors, blur and sharpening each show something.

    Examples
    --------
    >>> img = sample_image()
    >>> img.shape, img.dtype
    ((256, 256), dtype('uint8'))
    """
    s = size / 256.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = 40.0 + 120.0 * xx / max(size - 1, 1)  # gradient: 40 .. 160
    disc = (xx - 80 * s) ** 2 + (yy - 80 * s) ** 2 < (45 * s) ** 2
    img[disc] = 230.0
    img[int(30 * s) : int(100 * s), int(150 * s) : int(220 * s)] = 15.0  # dark square
    tri = (yy > 140 * s) & (yy < 230 * s) & (np.abs(xx - 70 * s) < (yy - 140 * s) * 0.6)
    img[tri] = 200.0
    stripes_v = (yy > 140 * s) & (yy < 190 * s) & (xx > 140 * s) & (xx < 240 * s)
    img[stripes_v] = np.where((xx[stripes_v] // max(int(8 * s), 1)) % 2 == 0, 220.0, 30.0)
    stripes_h = (yy > 200 * s) & (yy < 245 * s) & (xx > 140 * s) & (xx < 240 * s)
    img[stripes_h] = np.where((yy[stripes_h] // max(int(6 * s), 1)) % 2 == 0, 210.0, 50.0)
    texture = (xx > 110 * s) & (xx < 135 * s) & (yy > 20 * s) & (yy < 240 * s)
    checker = ((xx // 2 + yy // 2) % 2) * 60.0 - 30.0
    img[texture] += checker[texture]
    noise = np.random.default_rng(20240601).normal(0.0, 6.0, img.shape)  # fixed seed
    return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


def demo_gallery(out_dir: str | Path, image: np.ndarray | None = None) -> Path:
    """Apply the notes' kernels (edges, 5x5 blur, sharpen) and Sobel magnitude; save a gallery.

    Like the notes: true convolution, "valid" mode, displayed with vmin=0, vmax=max ("clip").
    Writes ``out_dir/filters_gallery.png`` and returns its path.

    Examples
    --------
    >>> import tempfile
    >>> demo_gallery(tempfile.mkdtemp()).name
    'filters_gallery.png'
    """
    from cnnlab.plots import save_figure

    img = sample_image() if image is None else np.asarray(image)
    results = []
    for spec, title in zip(DEMO_KERNELS, DEMO_TITLES, strict=True):
        raw = filter_image(img, spec, mode="valid")
        results.append(FilterResult(title, raw, to_display(raw, "clip")))
    fig = gallery_figure(img, results, title="The notes' kernels on the sample image")
    return save_figure(fig, Path(out_dir) / "filters_gallery.png")
