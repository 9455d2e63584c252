"""Light checks of the benchmark harness (benchmarks/): FLOP counts, peak, data exporters.

No TensorFlow and no timed assertions here: the benchmark itself is run by hand.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Import benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("bench_train")
peak = _load("peak")
plain = _load("plain_torch")


# ---------------------------------------------------------------- FLOPs


def test_forward_flops_mnist_by_hand():
    conv1 = 2 * 28 * 28 * 1 * 32 * 9  # 451_584
    conv2 = 2 * 14 * 14 * 32 * 64 * 9  # 7_225_344
    fc1 = 2 * (7 * 7 * 64) * 128  # 802_816
    fc2 = 2 * 128 * 10  # 2_560
    assert conv1 + conv2 + fc1 + fc2 == 8_482_304
    assert bench.forward_flops(bench.TASKS["mnist"]) == 8_482_304
    assert bench.training_flops(bench.TASKS["mnist"], 60_000 * 3) == 3 * 8_482_304 * 180_000


def test_forward_flops_neu_by_hand():
    conv1 = 2 * 200 * 200 * 1 * 32 * 9  # 23_040_000
    conv2 = 2 * 100 * 100 * 32 * 64 * 9  # 368_640_000
    conv3 = 2 * 50 * 50 * 64 * 128 * 9  # 368_640_000
    fc1 = 2 * (25 * 25 * 128) * 128  # 20_480_000
    fc2 = 2 * 128 * 6  # 1_536
    assert conv1 + conv2 + conv3 + fc1 + fc2 == 780_801_536
    assert bench.forward_flops(bench.TASKS["neu"]) == 780_801_536


@pytest.mark.parametrize("task", ["mnist", "neu"])
def test_forward_flops_match_torch_flop_counter(task):
    """The analytic count equals torch's own FLOP counter on the plain-PyTorch model."""
    model = plain.MODELS[task]()
    h, w, c = bench.TASKS[task].input_hwc
    x = torch.zeros(1, c, h, w)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() == bench.forward_flops(bench.TASKS[task])


def test_training_flops_convention_close_to_torch_counter():
    """3 x forward over-counts a real step only by conv1's skipped input gradient."""
    model = plain.mnist_model()
    x, y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    conv1 = 2 * 28 * 28 * 1 * 32 * 9
    assert counter.get_total_flops() == bench.training_flops(bench.TASKS["mnist"], 4) - 4 * conv1


# ---------------------------------------------------------------- peak


def test_matmul_peak_tiny_sizes_positive():
    res = peak.matmul_peak(sizes=(32, 64), repeats=1)
    assert res["fp32_gflops"] > 0 and res["bf16_gflops"] > 0
    assert res["threads"] >= 1
    measured = [r for r in res["runs"] if "gflops" in r]
    assert {r["dtype"] for r in measured} == {"fp32", "bf16"}
    for r in measured:  # GFLOP/s is 2 n^3 / time
        assert r["gflops"] == pytest.approx(2 * r["n"] ** 3 / r["best_s"] / 1e9)
    assert res["fp32_gflops"] == max(r["gflops"] for r in measured if r["dtype"] == "fp32")


def test_peak_cli_prints_json(capsys):
    assert peak.main(["--sizes", "32", "--repeats", "1", "--dtypes", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fp32_gflops"] > 0 and "bf16_gflops" not in out


# ---------------------------------------------------------------- data exporters


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True)
    _write_idx(root / "train-images-idx3-ubyte.gz", arrays["train_x"])
    _write_idx(root / "train-labels-idx1-ubyte.gz", arrays["train_y"])
    _write_idx(root / "t10k-images-idx3-ubyte.gz", arrays["test_x"])
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", arrays["test_y"])
    return arrays


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(bench.read_idx(tmp_path / "a.gz"), arr)

    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(CnnlabError, match="magic"):
        bench.read_idx(tmp_path / "bad.gz")
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(CnnlabError, match="header says 24 bytes"):
        bench.read_idx(tmp_path / "short.gz")
    with pytest.raises(CnnlabError, match="not found"):
        bench.read_idx(tmp_path / "missing.gz")


def test_export_mnist_writes_the_arrays_the_scripts_load(tmp_path):
    arrays = _fake_mnist(tmp_path / "data" / "mnist")
    info = bench.export_task("mnist", tmp_path / "data", tmp_path / "out", use_cnnlab=False)
    assert (info["n_train"], info["n_test"]) == (30, 12)
    assert Path(info["files"]["train_x"]).name == "MNIST_train_imgs.npy"
    for key, expected in arrays.items():
        got = np.load(info["files"][key], allow_pickle=False)
        np.testing.assert_array_equal(got, expected)


def test_export_subset_is_a_seeded_subset(tmp_path):
    arrays = _fake_mnist(tmp_path / "data" / "mnist")
    a = bench.export_task("mnist", tmp_path / "data", tmp_path / "a", subset=7, use_cnnlab=False)
    b = bench.export_task("mnist", tmp_path / "data", tmp_path / "b", subset=7, use_cnnlab=False)
    assert (a["n_train"], a["n_test"]) == (7, 7)
    xa = np.load(a["files"]["train_x"])
    np.testing.assert_array_equal(xa, np.load(b["files"]["train_x"]))
    # every exported image is one of the originals, with its own label
    ya = np.load(a["files"]["train_y"])
    for img, lab in zip(xa, ya, strict=True):
        (hit,) = np.flatnonzero((arrays["train_x"] == img).all(axis=(1, 2)))
        assert arrays["train_y"][hit] == lab


def test_stratified_split_neu_sizes():
    labels = np.repeat(np.arange(6), 240)
    tr, te = bench.stratified_split(labels, test_fraction=0.2, seed=0)
    assert (len(tr), len(te)) == (1152, 288)
    assert np.bincount(labels[te]).tolist() == [48] * 6
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(1440))
    _, te2 = bench.stratified_split(labels, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(te, te2)


def test_neu_reader_labels_in_lecture_order(tmp_path):
    folder = tmp_path / "neu-det" / "IMAGES"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for cls in bench.NEU_CLASSES:
        for i in range(1, 6):
            gray = rng.integers(0, 256, (200, 200), dtype=np.uint8)
            Image.fromarray(gray).save(folder / f"{cls}_{i}.jpg", quality=90)
    info = bench.export_task("neu", tmp_path, tmp_path / "out", use_cnnlab=False)
    assert (info["n_train"], info["n_test"]) == (24, 6)  # round(0.2 * 5) = 1 per class in test
    assert Path(info["files"]["train_x"]).name == "NEU_train_imgs.npy"
    x = np.load(info["files"]["test_x"])
    y = np.load(info["files"]["test_y"])
    assert x.shape == (6, 200, 200, 1) and x.dtype == np.uint8
    assert sorted(y.tolist()) == [0, 1, 2, 3, 4, 5]
    # label k must be the k-th name of the notes' list: find each test image's source file
    sources = {f: np.asarray(Image.open(f).convert("L")) for f in sorted(folder.glob("*.jpg"))}
    for img, lab in zip(x[..., 0], y, strict=True):
        (src,) = [f for f, a in sources.items() if np.array_equal(a, img)]
        assert src.stem.rsplit("_", 1)[0] == bench.NEU_CLASSES[lab]
    assert bench.NEU_CLASSES[1] == "rolled-in_scale"


def test_neu_reader_errors(tmp_path):
    with pytest.raises(CnnlabError, match="no NEU-DET images"):
        bench.neu_arrays(tmp_path)
    (tmp_path / "IMAGES").mkdir()
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / "IMAGES" / "rust_1.jpg")
    with pytest.raises(CnnlabError, match="NEU class"):
        bench.neu_arrays(tmp_path)


@pytest.mark.realdata
def test_real_neu_export_counts(real_data, tmp_path):
    info = bench.export_task("neu", real_data, tmp_path, use_cnnlab=False)
    assert (info["n_train"], info["n_test"]) == (1152, 288)
    y = np.load(info["files"]["test_y"])
    assert np.bincount(y).tolist() == [48] * 6


# ---------------------------------------------------------------- driver pieces


def test_result_parsing_helpers():
    out = 'epoch 1/1: loss 1\n{"fit_s": 2.5, "test_accuracy": 0.9}\nnoise {\n'
    assert bench.last_json_line(out) == {"fit_s": 2.5, "test_accuracy": 0.9}
    assert bench.last_json_line("no json here") is None
    metrics = {"train_seconds": 18.5, "final": {"val_accuracy": None}, "test": {"accuracy": 0.86}}
    assert bench.find_accuracy(metrics) == 0.86
    assert bench.find_accuracy({"nothing": 1}) is None


def test_contestant_commands(tmp_path):
    files = {k: str(tmp_path / f"{k}.npy") for k in ("train_x", "train_y", "test_x", "test_y")}
    info = {"files": files}
    cmd = bench.contestant_command("torch+cl+bf16", "neu", info, 10, 50, tmp_path / "run")
    assert cmd[1].endswith("plain_torch.py") and cmd[2] == "neu"
    assert cmd[-2:] == ["--channels-last", "--bf16"]
    assert ["--epochs", "10", "--batch-size", "50"] == cmd[7:11]
    cmd = bench.contestant_command("cnnlab", "mnist", info, 3, 50, tmp_path / "run")
    assert cmd[1:6] == ["train", "--data", str(tmp_path), "--model", "seed-mnist"]
    cmd = bench.contestant_command("keras", "mnist", info, 3, 50, tmp_path / "run")
    assert ".venv-keras" in cmd[0] and cmd[1].endswith("keras_lecture.py")


def test_plain_torch_script_trains_and_reports(tmp_path, capsys):
    """A tiny end-to-end run of the plain loop on generated data, both levers switched on."""
    rng = np.random.default_rng(3)
    paths = []
    for name, arr in {
        "tx": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "ty": rng.integers(0, 10, 20, dtype=np.uint8),
        "vx": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "vy": rng.integers(0, 10, 8, dtype=np.uint8),
    }.items():
        np.save(tmp_path / f"{name}.npy", arr)
        paths.append(str(tmp_path / f"{name}.npy"))
    argv = ["mnist", *paths, "--epochs", "1", "--batch-size", "10", "--channels-last", "--bf16"]
    assert plain.main(argv) == 0
    res = bench.last_json_line(capsys.readouterr().out)
    assert res["contestant"] == "torch+cl+bf16"
    assert (res["n_train"], res["n_test"], res["epochs"]) == (20, 8, 1)
    assert 0.0 <= res["test_accuracy"] <= 1.0 and res["fit_s"] > 0


def test_to_tensors_layouts():
    x3 = np.full((2, 5, 5), 255, np.uint8)
    x4 = np.zeros((2, 5, 5, 1), np.uint8)
    xt, yt = plain.to_tensors(x3, np.array([1, 2], np.uint8))
    assert xt.shape == (2, 1, 5, 5) and float(xt.max()) == 1.0 and yt.dtype == torch.int64
    assert plain.to_tensors(x4, np.array([0, 0]))[0].shape == (2, 1, 5, 5)


def test_run_process_records_failure_and_timeout(tmp_path):
    res = bench.run_process(
        [sys.executable, "-c", "import sys; sys.exit('bad input')"], tmp_path / "fail.log"
    )
    assert res["rc"] == 1 and res["error_tail"] == "bad input" and res["wall_s"] > 0
    assert "bad input" in (tmp_path / "fail.log").read_text()
    res = bench.run_process(
        [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "t.log", timeout=1.0
    )
    assert res["rc"] == -1 and "timed out" in res["error_tail"] and res["wall_s"] < 20
