"""CLI round trips (train -> evaluate -> predict on one run folder) and bad input, through
a subprocess: one-line errors, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_train_helpers import CLASSES, bar_image, write_bars_folder

from cnnlab.images import write_image


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory):
    """Train through the CLI on a generated class-per-folder dataset."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("clirun")
    data = write_bars_folder(root / "bars", n_per_class=40, size=16)
    run = root / "run"
    proc = run_cli(
        "train",
        "--data",
        str(data),
        "--model",
        "seed-mnist",
        "--epochs",
        "3",
        "--batch-size",
        "20",
        "--val-split",
        "0.2",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    return data, run, json.loads(proc.stdout)


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cnnlab: error: ")
    for n in needles:
        assert n in err, err


def test_train_json_and_run_folder(cli_run) -> None:
    _, run, summary = cli_run
    assert summary["run_dir"] == str(run)
    assert len(summary["history"]) == 3
    assert summary["test"]["n"] == 24  # 20% of 120, stratified
    assert summary["test"]["accuracy"] >= 0.75  # chance is 1/3
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_kwargs"]["image_size"] == [16, 16]
    assert cfg["dataset"]["class_names"] == sorted(CLASSES)


def test_evaluate_json_reapplies_the_run_split(cli, cli_run, tmp_path: Path) -> None:
    data, run, summary = cli_run
    proc = cli("evaluate", str(run), "--data", str(data), "--json", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"accuracy", "n", "class_names", "per_class", "confusion_matrix"} <= report.keys()
    assert report["n"] == 24
    assert report["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert "split.json" in report["split_source"]
    assert sum(map(sum, report["confusion_matrix"])) == 24
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert (tmp_path / "misclassified.png").is_file()
    # the model file alone, inside its run folder, still brings the run's split
    proc = cli(
        "evaluate",
        str(run / "model.safetensors"),
        "--data",
        str(data),
        "--json",
        "--out-dir",
        str(tmp_path / "by-file"),
    )
    assert proc.returncode == 0, proc.stderr
    by_file = json.loads(proc.stdout)
    assert "split.json" in by_file["split_source"]
    assert by_file["confusion_matrix"] == report["confusion_matrix"]
    proc = cli("evaluate", str(run / "model.safetensors"), "--data", str(data), "--split", "all")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "on 120 images" in proc.stdout
    assert (run / "eval-all" / "confusion_matrix.png").is_file()


def test_predict_text_json_plot_and_bad_file(cli, cli_run, tmp_path: Path) -> None:
    data, run, _ = cli_run
    good = sorted((data / "vertical").glob("*.png"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    plot = tmp_path / "probs.png"
    proc = cli(
        "predict",
        str(run),
        *map(str, good),
        str(bad),
        "--json",
        "--top-k",
        "2",
        "--plot",
        str(plot),
    )
    assert proc.returncode == 1  # one file failed, the others were predicted
    out = json.loads(proc.stdout)
    assert out["failed"] == 1
    preds = out["predictions"]
    assert [p.get("true_label") for p in preds[:2]] == ["vertical", "vertical"]
    assert all(len(p["top_k"]) == 2 for p in preds[:2])
    assert "broken.jpg" in preds[2]["error"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    proc = cli("predict", str(run), str(good[0]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(good[0]))


def test_models_command(cli) -> None:
    proc = cli("models")
    assert proc.returncode == 0
    assert "seed-mnist" in proc.stdout and "421,642" in proc.stdout and "8.5 M" in proc.stdout
    proc = cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)["models"]}
    assert rows["seed-neu"]["input_shape"] == [1, 200, 200]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "nope"], ["unknown model 'nope'", "seed-mnist"]),
        (["--model", "seed-mnist", "--epochs", "0"], ["--epochs"]),
        (["--model", "seed-mnist", "--batch-size", "-1"], ["--batch-size"]),
        (["--model", "seed-mnist", "--lr", "0"], ["--lr"]),
        (["--model", "seed-mnist", "--val-split", "1.5"], ["--val-split"]),
    ],
)
def test_train_bad_settings(cli, args, needles, tmp_path: Path) -> None:
    _one_line_error(cli("train", "--data", str(tmp_path), *args), *needles)


def test_bad_model_sources(cli, tmp_path: Path, cli_run) -> None:
    data, _, _ = cli_run
    img = write_image(tmp_path / "x.png", bar_image(0, 16, np.random.default_rng(0)))
    _one_line_error(cli("predict", str(tmp_path), str(img)), "no model.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    _one_line_error(cli("evaluate", str(trunc), "--data", str(data)), "not a readable")


def test_device_cuda_and_unwritable_out(cli, tmp_path: Path, cli_run) -> None:
    import torch

    data, _, _ = cli_run
    if not torch.cuda.is_available():
        proc = cli(
            "train",
            "--data",
            str(data),
            "--model",
            "seed-mnist",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "r"),
        )
        _one_line_error(proc, "--device cuda")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("train", "--data", str(data), "--model", "seed-mnist", "--out", str(blocker / "run"))
    _one_line_error(proc, "cannot write the run folder")


def test_class_name_mismatch_is_refused(cli, cli_run, tmp_path: Path) -> None:
    _, run, _ = cli_run
    other = tmp_path / "other"
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        for i in range(6):
            write_image(other / name / f"{i}.png", bar_image(0, 16, rng))
    _one_line_error(
        cli("evaluate", str(run), "--data", str(other), "--split", "all"),
        "class names do not match",
    )


def test_clock_budget_through_the_cli_and_its_resume_refused(cli, cli_run, tmp_path: Path):
    data, _, _ = cli_run
    run = tmp_path / "clock"
    proc = cli(
        "train", "--data", str(data), "--model", "seed-mnist", "--epochs", "2",
        "--batch-size", "20", "--time-budget", "1m", "--budget-mode", "clock",
        "--device", "cpu", "--out", str(run), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["time_budget"]["mode"] == "clock" and metrics["time_budget"]["steps"] == 8
    assert json.loads((run / "config.json").read_text())["config"]["budget_mode"] == "clock"
    _one_line_error(cli("train", "--resume", str(run)), "--budget-mode clock", "--resume")
    bad = cli("train", "--data", str(data), "--model", "seed-mnist", "--budget-mode", "wall")
    assert bad.returncode == 2 and "argument --budget-mode: invalid choice" in bad.stderr
