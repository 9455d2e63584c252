"""Classification metrics from labels and predictions, defined exactly as scikit-learn does.

Computed with NumPy from the confusion matrix (rows = true class, columns = predicted), so
evaluation needs no sklearn import; the tests check every number against sklearn.
A class never predicted has precision 0, a class absent from the labels has recall 0 and
F1 0 (sklearn's `zero_division=0`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): entry [i, j] = images of class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 / support, macro averages, confusion matrix.

    Examples
    --------
    >>> r = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> r["accuracy"], r["per_class"]["b"]["precision"]
    (0.75, 0.6666666666666666)
    """
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted.astype(np.float64))
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "n": n,
        "class_names": list(class_names),
        "per_class": per_class,
        "macro_avg": {
            "precision": float(precision.mean()) if k else 0.0,
            "recall": float(recall.mean()) if k else 0.0,
            "f1": float(f1.mean()) if k else 0.0,
        },
        "confusion_matrix": cm.tolist(),
    }
