"""Calibration: ECE against a hand computation and a plain loop, temperature scaling recovers a
known temperature, and train stores the temperature fitted on the val split with the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_helpers import bars_dataset, train_tiny_run

from cnnlab.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    probabilities,
    reliability_bins,
    reliability_figure,
    softmax_t,
    store_calibration,
    temperature_for_confidence,
    temperature_of,
)
from cnnlab.errors import CnnlabError
from cnnlab.train import load_model
from cnnlab.train.checkpoint import read_safetensors


def calibrated_sample(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)
    return z, np.minimum(y, k - 1)


def ece_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Guo et al.'s definition written out: bins (lo, hi], sum |B|/n |acc - conf|."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if inside.any():
            acc = (pred[inside] == labels[inside]).mean()
            total += inside.sum() / len(labels) * abs(acc - conf[inside].mean())
    return total


def test_ece_by_hand() -> None:
    # confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right); 5 bins of width 0.2:
    # (0.8, 1]: {0.9}, acc 1, gap 0.1; (0.6, 0.8]: {0.8, 0.7}, acc 0.5, conf 0.75, gap 0.25;
    # (0.4, 0.6]: {0.6}, acc 1, gap 0.4 -> ECE = (0.1 + 2 * 0.25 + 0.4) / 4 = 0.25
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(p, y, n_bins=5) == pytest.approx(0.25)
    b = reliability_bins(p, y, n_bins=5)
    assert b.count.tolist() == [0, 0, 1, 2, 1]
    assert b.accuracy[2:].tolist() == [1.0, 0.5, 1.0]
    assert b.confidence[2:] == pytest.approx([0.6, 0.75, 0.9])
    assert np.isnan(b.accuracy[:2]).all()
    assert b.to_dict()["accuracy"][:2] == [None, None]
    # one bin: |accuracy - mean confidence| = |0.75 - 0.75| = 0
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(0.0)
    # all right with confidence 1: no gap
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 20])
def test_ece_matches_a_plain_loop(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    z = rng.normal(0, 3, (500, 6))
    p = softmax_t(z).astype(np.float64)
    y = rng.integers(0, 6, 500)
    # confidences on bin edges go to the lower bin, as (lo, hi] says
    p[:5] = [0.6, 0.4, 0, 0, 0, 0]
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(ece_loop(p, y, n_bins))


def test_ece_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    z, y = calibrated_sample(40000, 5, 2.0, seed=0)
    assert expected_calibration_error(softmax_t(z), y) < 0.012
    assert expected_calibration_error(softmax_t(3 * z), y) > 0.08


def test_softmax_t_and_probabilities_apply_the_stored_temperature() -> None:
    z = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=np.float32)
    ref = torch.softmax(torch.from_numpy(z) / 2.5, 1).numpy()
    assert softmax_t(z, 2.5) == pytest.approx(ref, abs=1e-7)
    assert probabilities(z, {"calibration": {"temperature": 2.5}}) == pytest.approx(ref, abs=1e-7)
    plain = torch.softmax(torch.from_numpy(z), 1).numpy()
    assert probabilities(z, {"class_names": ["a", "b", "c"]}) == pytest.approx(plain, abs=1e-7)
    assert probabilities(z, None) == pytest.approx(plain, abs=1e-7)
    assert temperature_of({}) is None
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(CnnlabError, match="temperature"):
            temperature_of({"calibration": {"temperature": bad}})


@pytest.mark.parametrize("true_t", [3.0, 1.0, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    z, y = calibrated_sample(10000, 5, 2.0, seed=1)
    t = fit_temperature(z * true_t, y)
    assert t == pytest.approx(true_t, rel=0.05)
    # and it is the NLL minimum: a fine grid (torch cross-entropy) agrees
    grid = np.exp(np.linspace(np.log(t) - 0.04, np.log(t) + 0.04, 81))
    zt = torch.from_numpy(z * true_t)
    losses = [F.cross_entropy(zt / g, torch.from_numpy(y)).item() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(losses))], rel=2e-3)
    assert nll(z * true_t, y, t) <= nll(z * true_t, y, 1.0) + 1e-12


def test_fit_temperature_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError):
        fit_temperature(np.array([[np.nan, 1.0]]), np.array([0]))


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_temperature_for_confidence_hits_the_mean_confidence(target: float) -> None:
    z = np.random.default_rng(4).normal(0, 3, size=(200, 6))
    t = temperature_for_confidence(z, target)
    assert t is not None
    conf = torch.softmax(torch.from_numpy(z) / t, dim=1).max(1).values.mean().item()
    assert conf == pytest.approx(target, abs=1e-6)


def test_temperature_for_confidence_is_none_when_out_of_reach() -> None:
    # tied logits: every T gives confidence 1/K; and a target above what T_BOUNDS reach
    assert temperature_for_confidence(np.zeros((5, 4)), 0.9) is None
    assert temperature_for_confidence(np.array([[0.0, 1e-4]]), 0.99) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


def _val_logits(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent path: the run's val images through a plain forward pass."""
    ds = bars_dataset()  # the dataset train_tiny_run trains on
    model, _ = load_model(run)
    idx = ds.splits["val"]
    with torch.no_grad():
        z = model(ds.images[idx].float() / 255)
    return z.double().numpy(), ds.labels[idx].numpy()


def test_train_stores_calibration_by_laplace_when_val_is_all_right(tiny_run: Path) -> None:
    _, meta = load_model(tiny_run)
    cal = meta["calibration"]
    assert cal["fitted_on"] == "val" and cal["n"] == 48
    z, y = _val_logits(tiny_run)
    assert (z.argmax(1) == y).all()  # this tiny run gets every val image right: no NLL minimum
    with pytest.raises(ValueError, match="no minimum"):
        fit_temperature(z, y)
    # T makes the mean confidence (n+1)/(n+2) = 49/50 (checked with torch's softmax)
    assert "Laplace" in cal["note"] and cal["temperature"] != 1.0
    conf = torch.softmax(torch.from_numpy(z) / cal["temperature"], dim=1).max(1).values
    assert conf.mean().item() == pytest.approx(49 / 50, abs=1e-5)
    assert cal["nll_before"] == pytest.approx(nll(z, y), rel=1e-4)
    assert cal["nll_after"] == pytest.approx(nll(z, y, cal["temperature"]), rel=1e-4)
    # model.json says the same as the model file
    assert json.loads((tiny_run / "model.json").read_text())["calibration"] == cal


def test_store_calibration_rewrites_meta_and_keeps_weights(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    before, raw_before = read_safetensors(run / "model.safetensors")
    z, y = calibrated_sample(2000, 3, 2.0, seed=3)
    rec = store_calibration(run / "model.safetensors", z * 2, y, fitted_on="val")
    after, raw_after = read_safetensors(run / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    meta = json.loads(raw_after["cnnlab_model"])
    assert meta["calibration"] == rec
    assert rec["temperature"] == pytest.approx(fit_temperature(z * 2, y), rel=1e-5)
    assert rec["n"] == 2000 and "note" not in rec
    assert rec["ece_after"] < rec["ece_before"] and rec["nll_after"] < rec["nll_before"]
    old = json.loads(raw_before["cnnlab_model"])
    assert {k: v for k, v in meta.items() if k != "calibration"} == {
        k: v for k, v in old.items() if k != "calibration"
    }
    assert json.loads((run / "model.json").read_text())["calibration"] == rec


def test_reliability_figure_is_a_png(tmp_path: Path) -> None:
    from cnnlab.plots import save_figure

    z, y = calibrated_sample(500, 4, 2.0, seed=2)
    bins = {
        "raw": reliability_bins(softmax_t(3 * z), y),
        "scaled": reliability_bins(softmax_t(z), y),
    }
    path = save_figure(reliability_figure(bins, title="t"), tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
