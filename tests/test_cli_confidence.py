"""Calibrate, evaluate (ECE, reject option, corruptions) and predict --reject-below on tiny
runs trained on a generated folder dataset, checked against an independent forward pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_helpers import write_bars_folder

from cnnlab.calibration import calibrate_model, expected_calibration_error, fit_temperature
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, load_model, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data folder, run with a val split, run without): one epoch each, a few seconds."""
    root = tmp_path_factory.mktemp("conf")
    data = write_bars_folder(root / "bars", n_per_class=40, size=16)
    out = {}
    for name, val in (("val", 0.2), ("noval", 0.0)):
        cfg = TrainConfig(
            data=str(data),
            model="seed-mnist",
            epochs=1,
            batch_size=20,
            val_split=val,
            seed=0,
            device="cpu",
            out=str(root / name),
        )
        train(cfg, progress=False, log=lambda _m: None)
        out[name] = root / name
    return data, out["val"], out["noval"]


def _logits(run: Path, data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent path: the split's files by name (split.json), PIL, /255, plain forward."""
    return _forward(run, data, json.loads((run / "split.json").read_text())[split])


def _forward(run: Path, data: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of `files` under `data`: PIL, /255, the model's plain forward."""
    model, meta = load_model(run)
    x = np.stack([np.asarray(Image.open(data / f).convert("L"), dtype=np.float32) for f in files])
    y = np.array([meta["class_names"].index(f.split("/")[0]) for f in files])
    with torch.no_grad():
        z = model(torch.from_numpy(x / 255)[:, None]).double().numpy()
    return z, y


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def _run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_calibrates_on_val_and_calibrate_refits_the_same_t(runs, capsys) -> None:
    data, run, _ = runs
    stored = json.loads((run / "model.json").read_text())["calibration"]
    z, y = _logits(run, data, "val")
    assert "note" not in stored  # one epoch: some val images are wrong, so T is fitted
    assert stored["temperature"] == pytest.approx(fit_temperature(z, y), rel=1e-4)
    assert stored["n"] == len(y) == 20  # 120 images: 24 test, then 20% of the rest
    code, out, _ = _run_main(capsys, "calibrate", str(run), "--data", str(data), "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["temperature"] == pytest.approx(stored["temperature"], rel=1e-6)
    assert rec["ece_before"] == pytest.approx(expected_calibration_error(_softmax(z), y), abs=1e-5)
    assert "split.json" in rec["split_source"]
    code, out, _ = _run_main(capsys, "calibrate", str(run), "--data", str(data), "--quiet")
    assert code == 0 and out.startswith("temperature ") and "ECE" in out and "NLL" in out


def test_calibrate_split_all_fits_t_on_a_labelled_folder(runs, capsys, tmp_path) -> None:
    """After `adapt`, a labelled set from the new conditions: T fitted on all its images."""
    _, run, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # calibrate rewrites the model files
    new = write_bars_folder(tmp_path / "line2", n_per_class=10, size=16, seed=7)
    code, out, _ = _run_main(
        capsys, "calibrate", str(copy), "--data", str(new), "--split", "all", "--json"
    )
    assert code == 0
    rec = json.loads(out)
    files = sorted(p.relative_to(new).as_posix() for p in new.rglob("*.png"))
    z, y = _forward(copy, new, files)  # raw logits: T is applied by predict, not the model
    meta = load_model(copy)[1]
    assert rec["n"] == len(files) == 30 and rec["fitted_on"] == "labelled"
    assert rec["ece_before"] == pytest.approx(expected_calibration_error(_softmax(z), y), abs=1e-5)
    if (z.argmax(1) != y).any():  # else T comes from the all-right rule, tested elsewhere
        assert rec["temperature"] == pytest.approx(fit_temperature(z, y), rel=1e-4)
    assert meta["calibration"]["temperature"] == pytest.approx(rec["temperature"], rel=1e-6)
    with pytest.raises(SystemExit):  # never on the test split
        main(["calibrate", str(copy), "--data", str(new), "--split", "test"])
    with pytest.raises(CnnlabError, match="--split must be one of val, all"):
        calibrate_model(copy, new, split="test")


@pytest.mark.slow  # a subprocess: about 5 s
def test_calibrate_without_val_split_is_a_one_line_error(runs, cli) -> None:
    data, _, noval = runs
    proc = cli("calibrate", str(noval), "--data", str(data))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cnnlab: error: ") and "--val-split" in err


@pytest.mark.slow  # 16 passes over the test images and five PNGs: about 10 s
def test_evaluate_reports_ece_reject_option_and_corruptions(runs, capsys, tmp_path) -> None:
    data, run, _ = runs
    code, out, _ = _run_main(
        capsys,
        "evaluate",
        str(run),
        "--data",
        str(data),
        "--json",
        "--reject-below",
        "0.8",
        "--reject-curve",
        "--corrupt",
        "--out-dir",
        str(tmp_path),
    )
    assert code == 0
    r = json.loads(out)
    z, y = _logits(run, data, "test")
    t = json.loads((run / "model.json").read_text())["calibration"]["temperature"]
    p = _softmax(z, t)
    assert r["temperature"] == t
    assert r["ece"] == pytest.approx(expected_calibration_error(p, y), abs=1e-5)
    assert r["ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(_softmax(z), y), abs=1e-5
    )
    keep = p.max(1) >= 0.8
    assert r["reject_below"] == 0.8 and r["n_accepted"] == keep.sum()
    assert r["rejection_rate"] == pytest.approx(1 - keep.mean())
    if keep.any():
        assert r["accepted_accuracy"] == pytest.approx((p.argmax(1) == y)[keep].mean())
    assert r["reject_curve"][0]["rejection_rate"] == 0.0
    assert r["reject_curve"][0]["accepted_accuracy"] == pytest.approx(r["accuracy"])
    rob = r["robustness"]
    assert rob["clean_accuracy"] == r["accuracy"]
    assert {len(v) for v in rob["accuracy"].values()} == {3}
    for name in ("reliability", "reject_curve", "robustness", "corruption_examples"):
        assert Path(r["plots"][name]).read_bytes()[:4] == b"\x89PNG", name
    code, out, _ = _run_main(
        capsys,
        "evaluate",
        str(run),
        "--data",
        str(data),
        "--reject-below",
        "0.8",
        "--out-dir",
        str(tmp_path / "text"),
    )
    assert code == 0
    assert f"temperature {t:.3f}" in out and "uncalibrated ECE" in out
    assert "reject below 0.8:" in out and "reliability:" in out


def test_evaluate_without_temperature_says_uncalibrated(runs, capsys, tmp_path) -> None:
    data, _, noval = runs
    code, out, _ = _run_main(
        capsys, "evaluate", str(noval), "--data", str(data), "--json", "--out-dir", str(tmp_path)
    )
    assert code == 0
    r = json.loads(out)
    z, y = _logits(noval, data, "test")
    assert r["temperature"] is None and "ece_uncalibrated" not in r
    assert r["ece"] == pytest.approx(expected_calibration_error(_softmax(z), y), abs=1e-5)


def test_predict_marks_uncertain_images(runs, capsys) -> None:
    data, run, _ = runs
    files = sorted((data / "diagonal").glob("*.png"))[:6]
    code, out, _ = _run_main(
        capsys, "predict", str(run), *map(str, files), "--reject-below", "0.9", "--json"
    )
    assert code == 0
    res = json.loads(out)
    assert res["reject_below"] == 0.9
    for r in res["predictions"]:
        assert r["uncertain"] == (r["probability"] < 0.9)
    code, out, _ = _run_main(capsys, "predict", str(run), *map(str, files), "--reject-below", "1")
    assert code == 0
    lines = out.strip().splitlines()
    assert sum("UNCERTAIN" in line for line in lines) == sum(
        r["probability"] < 1 for r in res["predictions"]
    )


@pytest.mark.parametrize("cmd", ["evaluate", "predict"])
def test_reject_below_outside_0_1_is_refused(runs, capsys, cmd: str) -> None:
    data, run, _ = runs
    target = ["--data", str(data)] if cmd == "evaluate" else [str(data / "diagonal")]
    code, _, err = _run_main(capsys, cmd, str(run), *target, "--reject-below", "1.5")
    assert code == 2
    assert err.strip() == "cnnlab: error: --reject-below must be a probability in [0, 1], got 1.5"
