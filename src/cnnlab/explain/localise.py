"""Scoring explanations against annotated boxes: does the heatmap point at the defect?

Two measures per image, computed on the heatmap at the boxes' resolution:
- pointing game (Zhang et al., 2016): a hit when the heatmap's maximum (`peak`) lies inside
  a box, or within `tolerance` pixels of one;
- mass in boxes: the share of the heatmap's total inside the boxes.
Baselines say what chance gives: a map peaking at the image centre for the pointing game, a
uniform map for the mass (its share is the boxes' area fraction).

A third number says whether the map looks at the image itself: the share of maxima on the
image border (its outer `border_width` pixels), where zero padding lets a network
find evidence that is no defect.

Boxes are Pascal VOC (xmin, ymin, xmax, ymax): 1-based, inclusive pixel indices, so
(1, 1, W, H) is the whole image. An all-zero heatmap points nowhere: a miss with mass 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import Box, ImageDataset
from cnnlab.errors import CnnlabError


def box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels inside any box (clipped to the image).

    Examples
    --------
    >>> box_mask([(2, 1, 3, 2)], (3, 4)).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0 - 1) : max(0, y1), max(0, x0 - 1) : max(0, x1)] = True
    return mask


def scale_boxes(
    boxes: Sequence[Box], from_size: tuple[int, int], to_size: tuple[int, int]
) -> list[Box]:
    """Boxes drawn on an image of from_size (H, W), moved to an image of to_size (H, W).

    Pixel edges scale linearly: the box spanning pixel edges [x0 - 1, x1] maps to
    [(x0 - 1) * s, x1 * s], rounded to whole pixels (at least one pixel wide).

    Examples
    --------
    >>> scale_boxes([(1, 1, 100, 50)], (200, 200), (100, 400))
    [(1, 1, 200, 25)]
    """
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = []
    for x0, y0, x1, y1 in boxes:
        nx0, ny0 = round((x0 - 1) * sx) + 1, round((y0 - 1) * sy) + 1
        nx1, ny1 = max(nx0, round(x1 * sx)), max(ny0, round(y1 * sy))
        out.append((nx0, ny0, nx1, ny1))
    return out


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap's maximum; among tied maxima the one nearest their centroid.

    Upsampling a coarse map clamps at the image edge, so a maximum in an edge cell is a
    plateau of equal pixels; its centre, not its first pixel, is where the map points.

    Examples
    --------
    >>> peak(np.array([[0, 1, 1, 1], [0, 0, 0, 0]]))
    (0, 2)
    """
    heat = np.asarray(heat)
    rows, cols = np.nonzero(heat == heat.max())
    if len(rows) == 0:  # NaN in the map
        r, c = np.unravel_index(int(np.nanargmax(heat)), heat.shape)
        return int(r), int(c)
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))  # first on ties
    return int(rows[i]), int(cols[i])


def distance_to_boxes(point: tuple[int, int], boxes: Sequence[Box]) -> float:
    """Euclidean distance in pixels from (row, col) to the nearest box (0 inside one)."""
    r, c = point
    best = math.inf
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - 1 - c, 0, c - (x1 - 1))
        dy = max(y0 - 1 - r, 0, r - (y1 - 1))
        best = min(best, math.hypot(dx, dy))
    return best


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box], *, tolerance: float = 0.0) -> bool:
    """True when the heatmap's maximum lies in a box (or within `tolerance` pixels of one)."""
    heat = np.asarray(heat)
    if not boxes or not np.any(heat > 0):
        return False
    return distance_to_boxes(peak(heat), boxes) <= tolerance


def mass_in_boxes(heat: np.ndarray, boxes: Sequence[Box]) -> float:
    """Share of the heatmap's total that lies inside the boxes (0 for an all-zero map).

    Examples
    --------
    >>> heat = np.array([[1.0, 3.0], [0.0, 0.0]])
    >>> mass_in_boxes(heat, [(2, 1, 2, 1)])
    0.75
    """
    heat = np.asarray(heat, dtype=np.float64)
    total = heat.sum()
    if total <= 0:
        return 0.0
    return float(heat[box_mask(boxes, heat.shape)].sum() / total)


def border_width(shape: tuple[int, int]) -> int:
    """Width of the border band in pixels: 4% of the shorter side, at least 1.

    8 px at 200: one cell of seed-neu's 25x25 last-block map (and two of a 50x50 one), so
    the band's area share is also the chance that a random cell of such a map is on the edge.
    """
    return max(1, round(0.04 * min(shape)))


def border_area(shape: tuple[int, int]) -> float:
    """Share of the image in the border band: where a randomly placed maximum lands by chance."""
    h, w = shape
    b = border_width(shape)
    return 1.0 - max(0, h - 2 * b) * max(0, w - 2 * b) / (h * w)


def on_border(point: tuple[int, int], shape: tuple[int, int]) -> bool:
    """True when (row, col) lies in the outer `border_width(shape)` pixels of the image."""
    r, c = point
    h, w = shape
    return min(r, c, h - 1 - r, w - 1 - c) < border_width(shape)


def centre_map(shape: tuple[int, int]) -> np.ndarray:
    """A baseline map peaking at the centre pixel (H // 2, W // 2) and falling off linearly."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w]
    d = np.hypot(rr - h // 2, cc - w // 2)
    return 1.0 - d / max(d.max(), 1.0)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)

    def mean(key: str) -> float | None:
        return float(np.mean([r[key] for r in rows])) if n else None

    return {
        "n": n,
        "correct": int(sum(r["correct"] for r in rows)),
        "pointing": mean("hit"),
        "mass_in_boxes": mean("mass"),
        "peak_on_border": mean("border"),
        "empty_maps": int(sum(r["empty"] for r in rows)),
        "baseline": {"pointing_centre": mean("centre_hit"), "mass_uniform": mean("uniform_mass")},
    }


def score_maps(
    heats: np.ndarray,
    boxes: Sequence[Sequence[Box]],
    labels: Sequence[int],
    predicted: Sequence[int],
    class_names: Sequence[str],
    *,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """Pointing game and mass in boxes per class, over all images and as a class mean.

    heats: (N, H, W) maps; boxes: per image, at the maps' resolution; labels / predicted:
    class indices into class_names. Each class entry holds n, correct, pointing,
    mass_in_boxes, peak_on_border, empty_maps and the baseline's pointing_centre and
    mass_uniform.
    """
    heats = np.asarray(heats)
    if not len(heats) == len(boxes) == len(labels) == len(predicted):
        raise ValueError("heats, boxes, labels and predicted must have the same length")
    shape = heats.shape[1:] if heats.ndim == 3 else (0, 0)
    centre = centre_map(shape) if heats.ndim == 3 else None
    rows = []
    for heat, bx, y, p in zip(heats, boxes, labels, predicted, strict=True):
        empty = not np.any(heat > 0)
        rows.append(
            {
                "label": int(y),
                "correct": int(y) == int(p),
                "hit": pointing_hit(heat, bx, tolerance=tolerance),
                "mass": mass_in_boxes(heat, bx),
                "empty": empty,
                "border": not empty and on_border(peak(heat), shape),
                "centre_hit": pointing_hit(centre, bx, tolerance=tolerance),
                "uniform_mass": float(box_mask(bx, shape).mean()),
            }
        )
    per_class = {
        name: _summary([r for r in rows if r["label"] == i]) for i, name in enumerate(class_names)
    }
    scored = [s for s in per_class.values() if s["n"]]
    macro = {
        key: float(np.mean([s[key] for s in scored])) if scored else None
        for key in ("pointing", "mass_in_boxes", "peak_on_border")
    }
    macro["baseline"] = {
        key: float(np.mean([s["baseline"][key] for s in scored])) if scored else None
        for key in ("pointing_centre", "mass_uniform")
    }
    return {"per_class": per_class, "all": _summary(rows), "macro": macro}


def score_localisation(
    model_src: str | Path,
    data: str | Path | ImageDataset,
    *,
    split: str = "test",
    use_predicted: bool = False,
    layer: str | None = None,
    tolerance: float = 0.0,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Grad-CAM of a model scored against a dataset's boxes (NEU-DET), per class.

    Explains each image's true class (or the predicted one with `use_predicted`), on the
    run's held-out split by default (its split.json, as `cnnlab evaluate` does). Images
    without boxes are skipped and counted.
    """
    from cnnlab.evaluate import SPLITS, eval_data, model_labels
    from cnnlab.explain.gradcam import CAM_BATCH, default_layer, find_layer, grad_cam_images
    from cnnlab.explain.gradcam import layer_name as name_of
    from cnnlab.train.checkpoint import load_model
    from cnnlab.train.engine import to_input

    if split not in SPLITS:
        raise CnnlabError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if not tolerance >= 0:
        raise CnnlabError(f"--tolerance must be 0 or more pixels, got {tolerance}")
    t0 = time.perf_counter()
    model_src = Path(model_src)
    model, meta = load_model(model_src)
    ds, split_note, where = eval_data(data, meta, model_src, progress=progress)
    part = ds.split(split)
    if not part.boxes:
        raise CnnlabError(
            "the data has no annotated boxes to score against (NEU-DET has them)", where
        )
    model_classes = list(meta["class_names"])
    labels = model_labels(part, model_classes, where)
    keep = sorted(i for i, b in part.boxes.items() if b)
    skipped = len(part) - len(keep)
    if not keep:
        raise CnnlabError(f"no image of the '{split}' split has a box", where)
    images = part.images[keep]
    y = labels[keep]
    if layer:
        target_layer = find_layer(model, layer)
    else:
        target_layer = default_layer(model, to_input(images[:1]))
    heats, probs = grad_cam_images(
        model,
        images,
        targets=None if use_predicted else y,
        layer=target_layer,
        batch_size=batch_size or CAM_BATCH,
        device=device,
        progress=progress,
    )
    pred = probs.argmax(1)
    stored = tuple(part.image_size)
    boxes = [list(part.boxes[i]) for i in keep]
    if tuple(heats.shape[1:]) != stored:  # maps at another size than the boxes' images
        boxes = [scale_boxes(b, stored, tuple(heats.shape[1:])) for b in boxes]
    report = score_maps(heats, boxes, y, pred, model_classes, tolerance=tolerance)
    return {
        "model": str(model_src),
        "architecture": meta.get("architecture"),
        "split": split,
        "split_source": split_note,
        "layer": name_of(model, target_layer),
        "target": "predicted" if use_predicted else "true",
        "tolerance": tolerance,
        "image_size": list(heats.shape[1:]),
        "border_px": border_width(tuple(heats.shape[1:])),
        "border_area": border_area(tuple(heats.shape[1:])),
        "n": len(keep),
        "skipped_without_boxes": skipped,
        "accuracy": float((pred == y).mean()),
        **report,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    """The localisation scores as a text table (percentages), one row per class."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = [(name, s) for name, s in result["per_class"].items() if s["n"]]
    width = max(9, *(len(n) for n, _ in rows)) if rows else 9
    head = (
        f"{'class':<{width}} {'n':>4} {'correct':>7} {'pointing':>9} {'mass':>7} "
        f"{'border':>7} {'| centre':>9} {'uniform':>8}"
    )
    lines = [
        f"Grad-CAM at {result['layer']} for the {result['target']} class, "
        f"{result['split']} split ({result['split_source']}), {result['n']} images with boxes",
        head,
    ]
    for name, s in [*rows, ("all", result["all"])]:
        b = s["baseline"]
        lines.append(
            f"{name:<{width}} {s['n']:>4} {s['correct']:>7} {pct(s['pointing']):>9} "
            f"{pct(s['mass_in_boxes']):>7} {pct(s['peak_on_border']):>7} | "
            f"{pct(b['pointing_centre']):>7} "
            f"{pct(b['mass_uniform']):>8}"
        )
    m = result["macro"]
    lines.append(
        f"{'class mean':<{width}} {'':>4} {'':>7} {pct(m['pointing']):>9} "
        f"{pct(m['mass_in_boxes']):>7} {pct(m['peak_on_border']):>7} | "
        f"{pct(m['baseline']['pointing_centre']):>7} "
        f"{pct(m['baseline']['mass_uniform']):>8}"
    )
    lines.append(
        "pointing: heatmap maximum inside a box; mass: share of the heatmap inside boxes; "
        f"border: maximum in the outer {result.get('border_px', '?')} px of the image "
        f"({pct(result.get('border_area'))} of its area); "
        "centre / uniform: pointing / mass of a centre-peaked / uniform map (chance)"
    )
    return "\n".join(lines)
