"""Confidence calibration: expected calibration error, reliability bins, temperature scaling.

A model is calibrated when, among the images it labels with confidence 0.9, nine in ten are
right. Expected calibration error (ECE, Guo et al. 2017, "On Calibration of Modern Neural
Networks") measures the gap: the top-class confidences are put into `n_bins` equal-width
bins ((0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1]) and

    ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|.

Temperature scaling divides the logits by one scalar T > 0 fitted on held-out (validation)
images by minimising the negative log-likelihood; the predicted class never changes, only the
confidences. When every held-out image is right the NLL has no minimum (it falls as T -> 0),
so T is set instead so that the mean confidence equals (n + 1) / (n + 2), Laplace's rule of
succession: the accuracy that n right answers out of n support. T is stored with the model
(`meta["calibration"]`), and `probabilities(logits, meta)` is the one place where logits
become probabilities, with T applied when present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlab.runtime import Runtime

N_BINS = 15  # equal-width confidence bins for ECE (Guo et al.'s choice)
# where `calibrate` fits T: the run's val split, or every image of a labelled set it never saw
CALIBRATION_SPLITS = ("val", "all")
T_BOUNDS = (1e-2, 1e2)  # search range for the temperature (a bounded search over log T)


def softmax_t(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis, computed in float64, as a float32 array."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(z / float(temperature), dim=-1).numpy().astype(np.float32)


def temperature_of(meta: Mapping[str, Any] | None) -> float | None:
    """The temperature stored with a model (`meta["calibration"]["temperature"]`), or None."""
    cal = (meta or {}).get("calibration")
    if not cal:
        return None
    t = cal.get("temperature") if isinstance(cal, Mapping) else None
    if not isinstance(t, int | float) or not (math.isfinite(t) and t > 0):
        raise CnnlabError(f"model metadata has a bad calibration temperature: {t!r}")
    return float(t)


def probabilities(logits: np.ndarray | torch.Tensor, meta: Mapping[str, Any] | None) -> np.ndarray:
    """Class probabilities from logits: softmax(logits / T) with the model's stored T (or 1)."""
    return softmax_t(logits, temperature_of(meta) or 1.0)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin data of a reliability diagram; bin m covers (edges[m], edges[m + 1]]."""

    edges: np.ndarray  # (M + 1,) 0, 1/M, ..., 1
    count: np.ndarray  # (M,) images whose top confidence falls in the bin
    accuracy: np.ndarray  # (M,) fraction right in the bin (NaN for an empty bin)
    confidence: np.ndarray  # (M,) mean top confidence in the bin (NaN for an empty bin)

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |accuracy - confidence|."""
        n = self.count.sum()
        full = self.count > 0
        if n == 0:
            return float("nan")
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.count[full] * gap).sum() / n)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists (empty bins as None)."""

        def clean(a: np.ndarray) -> list:
            return [None if not math.isfinite(v) else round(float(v), 6) for v in a]

        return {
            "edges": [round(float(e), 6) for e in self.edges],
            "count": [int(c) for c in self.count],
            "accuracy": clean(self.accuracy),
            "confidence": clean(self.confidence),
        }


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> ReliabilityBins:
    """Bin the top-class confidence of `probs` (N, K) into `n_bins` equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be (N, K) and labels (N,), got {probs.shape}, {labels.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.arange(n_bins + 1) / n_bins  # exactly m / M, as in the definition
    # bin m holds (edges[m], edges[m + 1]]; a confidence of exactly 0 (impossible for a top
    # class) goes to bin 0
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(idx, weights=right, minlength=n_bins) / count
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return ReliabilityBins(edges, count, accuracy, confidence)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> float:
    """ECE of probabilities (N, K) against labels (N,), equal-width bins (Guo et al. 2017).

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    >>> round(expected_calibration_error(p, np.array([0, 1, 0, 1]), n_bins=5), 4)
    0.25
    """
    return reliability_bins(probs, labels, n_bins).ece


def nll(logits: np.ndarray | torch.Tensor, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T) (float64)."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (held-out) labels.

    The NLL is convex in 1/T, so a bounded scalar search over log T finds the one minimum
    (T is searched in T_BOUNDS). When every image is classified right the NLL falls towards
    0 as T -> 0 and has no minimum: that is a ValueError, as is empty or non-finite input.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"logits must be (N, K) with N > 0 and labels (N,), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    if bool((z.argmax(1) == y).all()):
        raise ValueError("every image is classified right: the NLL has no minimum over T")

    def objective(log_t: float) -> float:
        return nll(z, y, math.exp(log_t))

    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    return float(math.exp(res.x))


def temperature_for_confidence(logits: np.ndarray | torch.Tensor, target: float) -> float | None:
    """The T in T_BOUNDS at which the mean top-class probability of softmax(logits / T) is
    `target`, or None when no T there reaches it (it falls monotonically as T grows)."""
    from scipy.optimize import brentq

    z = np.asarray(logits, dtype=np.float64)

    def gap(log_t: float) -> float:
        return float(softmax_t(z, math.exp(log_t)).max(1).mean()) - target

    lo, hi = (math.log(b) for b in T_BOUNDS)
    if not gap(lo) >= 0 >= gap(hi):
        return None
    return float(math.exp(brentq(gap, lo, hi, xtol=1e-10)))


def calibration_record(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    fitted_on: str = "val",
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """Fit T on (logits, labels) and return what is stored as `meta["calibration"]`.

    When every held-out image is right the NLL has no minimum (it falls as T -> 0): T is set
    so that the mean confidence is (n + 1) / (n + 2) (Laplace's rule of succession), and
    "note" says so; T stays 1 when no T in T_BOUNDS reaches that.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    note = None
    if z.shape[0] and bool((z.argmax(1) == y).all()):
        n = int(y.shape[0])
        target = (n + 1) / (n + 2)
        found = temperature_for_confidence(z, target)
        t = 1.0 if found is None else found
        note = (
            f"every held-out image is classified right, so the NLL has no minimum: T set so "
            f"the mean confidence is (n+1)/(n+2) = {target:.4f} (Laplace's rule of succession)"
            if found is not None
            else "every held-out image is classified right and no temperature gives a mean "
            f"confidence of (n+1)/(n+2) = {target:.4f}: T left at 1"
        )
    else:
        t = fit_temperature(z, y)
    record = {
        "temperature": round(t, 6),
        "fitted_on": fitted_on,
        "n": int(y.shape[0]),
        "n_bins": n_bins,
        "ece_before": round(expected_calibration_error(softmax_t(z), y, n_bins), 6),
        "ece_after": round(expected_calibration_error(softmax_t(z, t), y, n_bins), 6),
        "nll_before": round(nll(z, y), 6),
        "nll_after": round(nll(z, y, t), 6),
    }
    if note:
        record["note"] = note
    return record


def store_calibration(
    model_file: str | Path,
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    fitted_on: str = "val",
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """Fit T on held-out logits and store it in the model file (and its run's model.json)."""
    from cnnlab.train.checkpoint import update_model_meta

    record = calibration_record(
        np.asarray(logits), np.asarray(labels), fitted_on=fitted_on, n_bins=n_bins
    )
    update_model_meta(model_file, calibration=record)
    return record


def calibrate_saved_model(
    model_file: str | Path,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    runtime: Runtime,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """Fit T for a saved model on held-out images (e.g. a run's val split) and store it.

    Used at the end of training, so it never fails the run: logits that are not finite give
    a record with temperature None and a note, and nothing is stored.
    """
    from cnnlab.train.checkpoint import load_model
    from cnnlab.train.engine import predict_logits

    model, meta = load_model(model_file)
    logits = predict_logits(runtime.place(model), images_u8, runtime=runtime, tta=meta.get("tta"))
    if not bool(torch.isfinite(logits).all()):
        return {"temperature": None, "note": "not calibrated: the model's logits are not finite"}
    return store_calibration(model_file, logits, labels.cpu(), n_bins=n_bins)


def calibration_line(record: Mapping[str, Any]) -> str:
    """One line for logs: the temperature and the ECE before and after, or the note."""
    if record.get("temperature") is None or "ece_before" not in record:
        return str(record.get("note", "not calibrated"))
    line = (
        f"temperature {record['temperature']:.3f} fitted on {record['n']} {record['fitted_on']} "
        f"images: ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}, "
        f"NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}"
    )
    return f"{line} ({record['note']})" if record.get("note") else line


def calibrate_model(
    model_src: str | Path,
    data: str | Path,
    *,
    device: str = "auto",
    n_bins: int = N_BINS,
    progress: bool = True,
    split: str = "val",
) -> dict[str, Any]:
    """Fit T on the run's validation split and store it with the model; returns the record.

    T is always fitted on the raw logits, so calibrating twice gives the same T. `split="all"`
    fits it on every image of `data` instead: labelled images the training never saw, e.g.
    from the new conditions a model was adapted to (`cnnlab adapt`).

    Examples
    --------
    >>> calibrate_model("runs/neu", "neu")["temperature"]  # doctest: +SKIP
    1.83
    """
    from cnnlab.evaluate import eval_data, model_labels
    from cnnlab.predict import image_logits
    from cnnlab.train.checkpoint import load_model, resolve_model_file

    if split not in CALIBRATION_SPLITS:
        raise CnnlabError(f"--split must be one of {', '.join(CALIBRATION_SPLITS)}, got '{split}'")
    model_file = resolve_model_file(model_src)
    model, meta = load_model(model_file)
    ds, split_note, where = eval_data(data, meta, model_file, progress=progress)
    if split == "all" and len(ds) < 2:
        raise CnnlabError("fitting a temperature needs at least 2 labelled images", where)
    if split == "val" and ("val" not in ds.splits or len(ds.splits["val"]) == 0):
        raise CnnlabError(
            "no validation split to fit a temperature on (the run was trained without one): "
            "train with --val-split, e.g. --val-split 0.1",
            model_src,
        )
    part = ds.split(split)
    y = model_labels(part, list(meta["class_names"]), str(data))
    logits = image_logits(model, part.images, device=device, tta=meta.get("tta"))
    fitted_on = "val" if split == "val" else "labelled"
    try:
        record = store_calibration(model_file, logits, y, n_bins=n_bins, fitted_on=fitted_on)
    except ValueError as e:
        raise CnnlabError(f"cannot fit a temperature ({e})", model_src) from None
    return {**record, "model": str(model_file), "split_source": split_note}


def reliability_figure(bins: Mapping[str, ReliabilityBins], *, title: str | None = None) -> Figure:
    """Reliability diagrams side by side (one per entry, e.g. raw and temperature-scaled).

    Top: accuracy per confidence bin against the diagonal (perfect calibration), the gap in
    red; bottom: how many images fall in each bin.
    """
    from cnnlab.plots import new_figure

    n = max(len(bins), 1)
    fig = new_figure(figsize=(4.2 * n, 5.2))
    axes = fig.subplots(2, n, squeeze=False, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for j, (name, b) in enumerate(bins.items()):
        ax, ax_n = axes[0, j], axes[1, j]
        width = np.diff(b.edges)
        centres = b.edges[:-1] + width / 2
        full = b.count > 0
        ax.bar(
            centres[full],
            b.accuracy[full],
            width=width[full],
            edgecolor="black",
            color="#4C72B0",
            label="accuracy",
        )
        gap_lo = np.minimum(b.accuracy[full], b.confidence[full])
        ax.bar(
            centres[full],
            np.abs(b.accuracy[full] - b.confidence[full]),
            bottom=gap_lo,
            width=width[full],
            fill=False,
            hatch="///",
            edgecolor="red",
            linewidth=0.8,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {b.ece:.4f}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax_n.bar(centres, b.count, width=width, color="gray", edgecolor="black")
        ax_n.set_yscale("symlog")
        ax_n.set_xlabel("top-class confidence")
        ax_n.set_ylabel("images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
