"""The reject option: images whose top probability is below P go to a person, not a label.

Inspection lines route doubtful parts to a human. With a threshold P, an image is
*uncertain* when its top-class probability is below P; the model answers only for the
others (*accepted*). The trade-off is the rejection rate (fraction sent to a person) against
the accuracy on the accepted images; `reject_curve` tabulates both over P. Probabilities
should be calibrated (`cnnlab.calibration`) for P to mean what it says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# thresholds printed by `evaluate --reject-curve`: where the trade-off usually lives
CURVE_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def check_threshold(p: float, flag: str = "--reject-below") -> float:
    """P as a float in [0, 1], or a one-line error naming the flag."""
    if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 <= p <= 1.0):
        raise CnnlabError(f"{flag} must be a probability in [0, 1], got {p}")
    return float(p)


def uncertain_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """True where the top probability of a row of `probs` (N, K) is below `threshold`."""
    return np.asarray(probs).max(axis=1) < threshold


def selective_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Rejection rate and accuracy on the accepted images at one threshold.

    `accepted_accuracy` is None when every image is rejected.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.4, 0.6]])
    >>> m = selective_metrics(p, np.array([0, 1, 0, 1]), 0.7)
    >>> m["rejection_rate"], m["accepted_accuracy"], m["n_accepted"]
    (0.5, 0.5, 2)
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    accepted = ~uncertain_mask(probs, threshold)
    n_acc = int(accepted.sum())
    right = probs.argmax(axis=1) == labels
    return {
        "reject_below": float(threshold),
        "n": n,
        "n_accepted": n_acc,
        "rejection_rate": (n - n_acc) / n if n else 0.0,
        "accepted_accuracy": float(right[accepted].mean()) if n_acc else None,
    }


def reject_curve(
    probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = CURVE_GRID
) -> list[dict[str, Any]]:
    """`selective_metrics` at each threshold, in the given order."""
    return [selective_metrics(probs, labels, float(t)) for t in thresholds]


def reject_curve_figure(
    probs: np.ndarray, labels: np.ndarray, *, title: str | None = None
) -> Figure:
    """Left: accepted accuracy and rejection rate over P; right: accuracy against rejection.

    Drawn at every distinct top probability (the exact curve), not only the printed grid.
    """
    from cnnlab.plots import new_figure

    conf = np.asarray(probs).max(axis=1)
    grid = np.unique(np.concatenate([[0.0], conf, [1.0]]))
    rows = reject_curve(probs, labels, grid)
    acc = np.array(
        [np.nan if r["accepted_accuracy"] is None else r["accepted_accuracy"] for r in rows]
    )
    rate = np.array([r["rejection_rate"] for r in rows])
    fig = new_figure(figsize=(10, 3.8))
    ax_p, ax_rc = fig.subplots(1, 2)
    ax_p.step(grid, acc, where="post", label="accuracy on accepted images")
    ax_p.step(grid, rate, where="post", label="rejection rate")
    ax_p.set_xlabel("reject below P (top probability)")
    ax_p.set_xlim(max(0.0, float(conf.min()) - 0.05) if conf.size else 0.0, 1.0)
    ax_p.set_ylim(0, 1.02)
    ax_p.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    ax_rc.plot(rate, acc, "-", marker=".", markersize=3)
    for t in (0.5, 0.9, 0.99):
        r = selective_metrics(probs, labels, t)
        if r["accepted_accuracy"] is not None:
            ax_rc.annotate(f"P={t}", (r["rejection_rate"], r["accepted_accuracy"]), fontsize=8)
    ax_rc.set_xlabel("rejection rate (sent to a person)")
    ax_rc.set_ylabel("accuracy on accepted images")
    ax_rc.set_xlim(0, 1)
    ax_rc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
