"""The reject option: rejection rate and accepted accuracy against plain NumPy, and the curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.reject import (
    CURVE_GRID,
    check_threshold,
    reject_curve,
    reject_curve_figure,
    selective_metrics,
    uncertain_mask,
)


def _random_probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p, rng.integers(0, k, n)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.77, 0.9, 0.99, 1.0])
def test_selective_metrics_match_numpy(threshold: float) -> None:
    p, y = _random_probs(1000, 4, seed=int(threshold * 100))
    m = selective_metrics(p, y, threshold)
    top = p.max(axis=1)
    keep = top >= threshold  # uncertain = top probability strictly below P
    assert m["n"] == 1000
    assert m["n_accepted"] == keep.sum()
    assert m["rejection_rate"] == pytest.approx(1 - keep.mean())
    if keep.any():
        assert m["accepted_accuracy"] == pytest.approx((p.argmax(1) == y)[keep].mean())
    else:
        assert m["accepted_accuracy"] is None
    assert (uncertain_mask(p, threshold) == ~keep).all()


def test_threshold_equal_to_top_probability_is_accepted() -> None:
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    assert uncertain_mask(p, 0.8).tolist() == [False, True, False]
    m = selective_metrics(p, np.array([0, 1, 1]), 0.8)
    assert (m["n_accepted"], m["accepted_accuracy"]) == (2, 1.0)
    assert selective_metrics(p, np.array([0, 1, 1]), 0.0)["rejection_rate"] == 0.0


def test_reject_curve_is_monotone_in_rejection() -> None:
    p, y = _random_probs(2000, 6, seed=7)
    # make confidence informative: the top class is right more often when it is confident
    y = np.where(np.random.default_rng(0).random(2000) < p.max(1), p.argmax(1), y)
    rows = reject_curve(p, y)
    assert [r["reject_below"] for r in rows] == list(CURVE_GRID)
    rates = [r["rejection_rate"] for r in rows]
    assert rates == sorted(rates)
    accs = [r["accepted_accuracy"] for r in rows if r["accepted_accuracy"] is not None]
    assert accs[-1] > accs[0]  # rejecting doubtful images raises accuracy on the rest


def test_check_threshold_names_the_flag() -> None:
    assert check_threshold(0.9) == 0.9
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(CnnlabError, match=r"--reject-below must be a probability in \[0, 1\]"):
            check_threshold(bad)


def test_reject_curve_figure_is_a_png(tmp_path: Path) -> None:
    from cnnlab.plots import save_figure

    p, y = _random_probs(300, 3, seed=1)
    path = save_figure(reject_curve_figure(p, y, title="t"), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
