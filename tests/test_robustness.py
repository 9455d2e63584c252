"""Corruptions against references (scipy.ndimage, np.pad, exact arithmetic) and the accuracy
table over corruptions x severities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cnnlab.robustness import (
    SEVERITIES,
    blur,
    brightness,
    contrast,
    corrupt,
    corruption_accuracy,
    corruption_examples_figure,
    gaussian_kernel1d,
    gaussian_noise,
    robustness_figure,
    shift,
    shift_pixels,
)


def _images(n: int = 4, c: int = 1, h: int = 23, w: int = 31, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, c, h, w), dtype=np.uint8))


def test_brightness_adds_and_clips_exactly() -> None:
    x = _images()
    ref = np.clip(x.numpy().astype(np.int64) + 51, 0, 255)  # 0.2 x 255 = 51
    got = brightness(x, 0.2)
    assert got.dtype == torch.uint8
    assert np.array_equal(got.numpy(), ref)
    assert brightness(torch.full((1, 1, 2, 2), 250, dtype=torch.uint8), 0.1).max() == 255


def test_contrast_scales_around_each_images_mean() -> None:
    # hand computation: mean 100, factor 0.5 -> 100 + 0.5 (x - 100)
    x = torch.tensor([[[[0, 100, 200]]], [[[10, 10, 10]]]], dtype=torch.uint8)
    assert contrast(x, 0.5).flatten().tolist() == [50, 100, 150, 10, 10, 10]
    # factor 2 on a wide image clips at both ends
    assert contrast(x, 2.0)[0].flatten().tolist() == [0, 100, 255]
    # random images, two channels: the mean is over C, H, W of each image (float64 reference)
    x = _images(3, 2)
    a = x.numpy().astype(np.float64)
    m = a.mean(axis=(1, 2, 3), keepdims=True)
    ref = np.clip(np.round((a - m) * 0.75 + m), 0, 255)
    diff = np.abs(contrast(x, 0.75).numpy().astype(np.int64) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 at .5 ties


def test_gaussian_kernel_matches_scipy() -> None:
    for sigma in (0.5, 1.0, 2.0, 1.3):
        k = gaussian_kernel1d(sigma).numpy()
        delta = np.zeros(len(k))
        delta[len(k) // 2] = 1
        ref = ndimage.gaussian_filter1d(delta, sigma, mode="constant", truncate=4.0)
        assert len(k) == 2 * int(4.0 * sigma + 0.5) + 1
        assert k == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("sigma", SEVERITIES["blur"])
def test_blur_matches_scipy_gaussian_filter(sigma: float) -> None:
    x = _images(3, 3, 40, 37, seed=1)
    ref = ndimage.gaussian_filter(
        x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
    )
    ref = np.clip(np.round(ref), 0, 255)
    diff = np.abs(blur(x, sigma).numpy().astype(np.int64) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 rounding at .5 ties


@pytest.mark.parametrize(("dy", "dx"), [(0, 0), (1, 2), (5, 3), (22, 30)])
def test_shift_matches_np_pad_edge(dy: int, dx: int) -> None:
    x = _images(2, 3)
    h, w = x.shape[-2:]
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (dy, 0), (dx, 0)), mode="edge")[..., :h, :w]
    assert np.array_equal(shift(x, dy, dx).numpy(), ref)
    # the content itself moved: pixel (i, j) is now at (i + dy, j + dx)
    assert torch.equal(shift(x, dy, dx)[..., dy:, dx:], x[..., : h - dy, : w - dx])


def test_shift_rejects_shifts_larger_than_the_image() -> None:
    with pytest.raises(ValueError):
        shift(_images(), 23, 0)


def test_shift_pixels_scale_with_the_image() -> None:
    assert [shift_pixels(f, 28) for f in SEVERITIES["shift"]] == [1, 2, 3]
    assert [shift_pixels(f, 200) for f in SEVERITIES["shift"]] == [6, 12, 24]
    assert shift_pixels(0.001, 28) == 1


def test_gaussian_noise_is_seeded_per_image_and_has_the_right_spread() -> None:
    x = torch.full((2, 1, 200, 200), 128, dtype=torch.uint8)
    a = gaussian_noise(x, 0.08, seed=3)
    assert torch.equal(a, gaussian_noise(x, 0.08, seed=3))
    assert not torch.equal(a, gaussian_noise(x, 0.08, seed=4))
    assert not torch.equal(a[0], a[1])  # each image its own noise
    # chunks with their first index give the same result as the whole set
    assert torch.equal(a[1:], gaussian_noise(x[1:], 0.08, seed=3, first=1))
    d = a.double() - 128
    assert d.mean().item() == pytest.approx(0.0, abs=0.3)
    assert d.std().item() == pytest.approx(0.08 * 255, rel=0.03)


def test_corrupt_dispatches_every_corruption_and_checks_arguments() -> None:
    x = _images(2, 1, 28, 28)
    for name, levels in SEVERITIES.items():
        for sev in range(1, len(levels) + 1):
            y = corrupt(x, name, sev)
            assert y.shape == x.shape and y.dtype == torch.uint8
            assert not torch.equal(y, x), (name, sev)
    assert torch.equal(corrupt(x, "shift", 3), shift(x, 3, 3))
    assert torch.equal(corrupt(x, "blur", 2), blur(x, 1.0))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "blur", 4)


def _mean_classifier(x: torch.Tensor) -> np.ndarray:
    """Scores for 2 classes: dark (mean < 128) or bright, as (N, 2)."""
    m = x.double().mean(dim=(1, 2, 3)).numpy()
    return np.stack([128 - m, m - 128], axis=1)


def test_corruption_accuracy_table_is_independent_of_chunking() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50)
    base = np.where(labels == 1, 150, 90)[:, None, None, None]
    images = torch.from_numpy(
        np.clip(base + rng.normal(0, 30, (50, 1, 12, 12)), 0, 255).astype(np.uint8)
    )
    r = corruption_accuracy(_mean_classifier, images, labels, seed=1)
    assert r["clean_accuracy"] == pytest.approx(
        (_mean_classifier(images).argmax(1) == labels).mean()
    )
    assert set(r["accuracy"]) == set(SEVERITIES)
    for name, accs in r["accuracy"].items():
        expect = [
            (_mean_classifier(corrupt(images, name, s, seed=1)).argmax(1) == labels).mean()
            for s in range(1, len(SEVERITIES[name]) + 1)
        ]
        assert accs == pytest.approx(expect)
    # brightening pushes dark images over the threshold: accuracy falls with severity
    assert r["accuracy"]["brightness"][-1] < r["clean_accuracy"]
    chunked = corruption_accuracy(_mean_classifier, images, labels, seed=1, chunk=7)
    assert chunked["accuracy"] == r["accuracy"]
    flat = [a for v in r["accuracy"].values() for a in v]
    assert r["mean_corrupted_accuracy"] == pytest.approx(np.mean(flat))


def test_robustness_figures_are_pngs(tmp_path: Path) -> None:
    from cnnlab.plots import save_figure

    r = {
        "clean_accuracy": 0.9,
        "accuracy": {k: [0.8, 0.7, 0.5] for k in SEVERITIES},
    }
    p = save_figure(robustness_figure({"a": r, "b": r}, title="t"), tmp_path / "r.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = save_figure(corruption_examples_figure(_images(1, 3)[0]), tmp_path / "e.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
