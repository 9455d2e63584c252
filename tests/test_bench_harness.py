"""Light checks of the benchmark harness (benchmarks/): FLOP counts, peak, data export.

No TensorFlow and no timed assertions here: the benchmark itself is run by hand.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import os
import struct
import sys
import threading
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


def test_winograd_flops_are_its_gemms():
    """With Winograd, a block taken by the kernel counts its 16 GEMMs per 2x2 tile (torch's
    FLOP counter on a bmm of those shapes); the 1-channel first block stays direct."""
    with FlopCounterMode(display=False) as counter:  # seed-mnist's second block, one image
        torch.bmm(torch.zeros(16, 7 * 7, 32), torch.zeros(16, 32, 64))
    conv2 = counter.get_total_flops()
    assert conv2 == 2 * 7 * 7 * 16 * 32 * 64
    mnist = bench.forward_flops(bench.TASKS["mnist"], winograd=True)
    assert mnist == bench.forward_flops(bench.TASKS["mnist"]) - 2 * 14 * 14 * 32 * 64 * 9 + conv2
    neu_convs = 2 * 50 * 50 * 16 * 32 * 64 + 2 * 25 * 25 * 16 * 64 * 128
    assert bench.forward_flops(bench.TASKS["neu"], winograd=True) == (
        23_040_000 + neu_convs + 20_480_000 + 1_536
    )


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
    """The four MNIST IDX .gz files under `root` (tiny, random); returns their arrays."""
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


# The notes' class order (keras_lecture.py's label k is the k-th name), written out here
# rather than imported so the test checks cnnlab's LECTURE_ORDER too.
LECTURE = ["scratches", "rolled-in_scale", "pitted_surface", "patches", "inclusion", "crazing"]
VOC = (
    "<annotation><filename>{name}</filename><size><width>{s}</width><height>{s}</height>"
    "<depth>1</depth></size><object><name>{cls}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
    "<xmax>8</xmax><ymax>8</ymax></bndbox></object></annotation>"
)


def _fake_neu_det(root: Path, per_class: int = 5, side: int = 24) -> dict[str, int]:
    """A tiny NEU-DET layout: IMAGES/<class>_<i>.jpg (flat gray) + ANNOTATIONS/<stem>.xml.

    Every image is one flat gray value, unique per file, so an exported image can be traced
    back to its file despite JPEG; returns {gray value: class name index in LECTURE}.
    """
    (root / "IMAGES").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    value_to_class = {}
    for k, cls in enumerate(sorted(LECTURE)):  # alphabetical, as NEU-DET lists them
        for i in range(1, per_class + 1):
            value = 8 * (k * per_class + i - 1) + 4
            name = f"{cls}_{i}.jpg"
            Image.fromarray(np.full((side, side), value, np.uint8)).save(root / "IMAGES" / name)
            xml = VOC.format(name=name, s=side, cls=cls)
            (root / "ANNOTATIONS" / f"{cls}_{i}.xml").write_text(xml)
            value_to_class[value] = LECTURE.index(cls)
    return value_to_class


def test_export_mnist_writes_the_arrays_the_scripts_load(tmp_path, monkeypatch):
    """MNIST through cnnlab's loader: the files' own split, in file order, bytes unchanged."""
    arrays = _fake_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "data"))
    info = bench.export_task("mnist", tmp_path / "out")
    assert info["source"] == "cnnlab.data.load_dataset"
    assert (info["n_train"], info["n_test"]) == (30, 12)
    assert info["image_shape"] == [28, 28]
    assert Path(info["files"]["train_x"]).name == "MNIST_train_imgs.npy"
    assert Path(info["files"]["test_y"]).name == "MNIST_test_labels.npy"
    for key, expected in arrays.items():
        got = np.load(info["files"][key], allow_pickle=False)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_export_subset_is_a_seeded_subset(tmp_path, monkeypatch):
    arrays = _fake_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "data"))
    a = bench.export_task("mnist", tmp_path / "a", subset=7)
    b = bench.export_task("mnist", tmp_path / "b", subset=7)
    assert (a["n_train"], a["n_test"]) == (7, 7)
    xa = np.load(a["files"]["train_x"])
    np.testing.assert_array_equal(xa, np.load(b["files"]["train_x"]))
    # every exported image is one of the originals, with its own label
    ya = np.load(a["files"]["train_y"])
    for img, lab in zip(xa, ya, strict=True):
        (hit,) = np.flatnonzero((arrays["train_x"] == img).all(axis=(1, 2)))
        assert arrays["train_y"][hit] == lab
    big = bench.export_task("mnist", tmp_path / "c", subset=1000)  # larger than the data
    assert (big["n_train"], big["n_test"]) == (30, 12)


def test_export_neu_labels_in_lecture_order(tmp_path, monkeypatch):
    """NEU-DET through cnnlab's loader: stratified 80/20, (N,H,W,1) uint8, notes' label order."""
    value_to_class = _fake_neu_det(tmp_path / "neu-det")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    info = bench.export_task("neu", tmp_path / "out")
    assert (info["n_train"], info["n_test"]) == (24, 6)  # 1 of 5 per class in test
    assert info["image_shape"] == [24, 24, 1]
    assert Path(info["files"]["train_x"]).name == "NEU_train_imgs.npy"
    seen = set()
    for split, n in (("train", 24), ("test", 6)):
        x = np.load(info["files"][f"{split}_x"], allow_pickle=False)
        y = np.load(info["files"][f"{split}_y"], allow_pickle=False)
        assert x.shape == (n, 24, 24, 1) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.uint8
        assert np.bincount(y, minlength=6).tolist() == [n // 6] * 6
        # label k must be the k-th name of the notes' list: trace each image to its file
        for img, lab in zip(x[..., 0], y, strict=True):
            value = min(value_to_class, key=lambda v: abs(v - float(img.mean())))
            assert abs(float(img.mean()) - value) < 2
            assert value_to_class[value] == lab, (value, LECTURE[lab])
            seen.add(value)
    assert len(seen) == 30  # every file exported once


def test_export_neu_split_and_subset_follow_seed(tmp_path, monkeypatch):
    _fake_neu_det(tmp_path / "neu-det")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    a = bench.export_task("neu", tmp_path / "a", seed=0)
    b = bench.export_task("neu", tmp_path / "b", seed=0)
    np.testing.assert_array_equal(np.load(a["files"]["test_x"]), np.load(b["files"]["test_x"]))
    sub = bench.export_task("neu", tmp_path / "c", subset=4, seed=0)
    assert (sub["n_train"], sub["n_test"]) == (4, 4)


def test_export_missing_data_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    with pytest.raises(CnnlabError, match="download disabled"):
        bench.export_task("mnist", tmp_path / "out")
    with pytest.raises(CnnlabError, match="NEU data not found"):
        bench.export_task("neu", tmp_path / "out")


@pytest.mark.realdata
def test_real_neu_export_counts(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(real_data))
    info = bench.export_task("neu", tmp_path)
    assert (info["n_train"], info["n_test"]) == (1152, 288)
    assert info["image_shape"] == [200, 200, 1]
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


@pytest.mark.parametrize(("amp", "own"), [(None, "fp32"), ("bfloat16", "bf16")])
def test_cnnlab_is_measured_against_the_peak_of_its_own_precision(amp, own):
    """cnnlab's precision is the machine's measured choice (config.json "runtime"): the
    table names it and the fraction of that precision's peak, the issue's yardstick."""
    arch = bench.TASKS["mnist"]
    peak = {"fp32_gflops": 200.0, "bf16_gflops": 400.0, "threads": 2}
    runtime = {"amp_dtype": amp, "amp_reason": f"{own}: measured"}
    rec = {"status": "ok", "wall_s": 30.0, "fit_s": 25.0, "test_accuracy": 0.99}
    rec = bench.add_derived({**rec, "runtime": runtime}, arch, 60000, 3, peak)
    gflops = bench.training_flops(arch, 180000) / 25.0 / 1e9  # by the convention, by hand
    assert rec["train_gflops"] == pytest.approx(gflops)
    assert rec["precision"] == own
    assert rec["frac_peak_own"] == pytest.approx(gflops / peak[f"{own}_gflops"])
    machine = {"date": "d", "cpu": "c", "logical_cpus": 2, "python": "3", "torch": "t"}
    task = {"contestants": {"cnnlab": rec}, "target_vs_keras": 0.35, "target_met": None}
    text = bench.table({"machine": machine, "peak": peak, "tasks": {"mnist": task}})
    share = 100 * gflops / peak[f"{own}_gflops"]
    assert f"cnnlab trained in {own}: {share:.1f}% of the {own} peak ({own}: measured)" in text
    assert "executed_gflops" not in rec and "Winograd" not in text
    # a run whose blocks ran by Winograd also gets the rate its executed multiplies ran at
    runtime["pool_relu"] = "fused kernel (x.so), 2 layer pairs, 1 ... by Winograd F(2x2,3x3)"
    rec = bench.add_derived({**rec, "runtime": runtime}, arch, 60000, 3, peak)
    executed = bench.training_flops(arch, 180000, winograd=True) / 25.0 / 1e9
    assert rec["executed_gflops"] == pytest.approx(executed) and executed < gflops
    task = {"contestants": {"cnnlab": rec}, "target_vs_keras": 0.35, "target_met": None}
    text = bench.table({"machine": machine, "peak": peak, "tasks": {"mnist": task}})
    share = 100 * executed / peak[f"{own}_gflops"]
    assert f"it executed {executed:.1f} GFLOP/s = {share:.1f}% of that peak" in text
    # a record without a runtime (an older cnnlab) keeps both fractions and no verdict
    plain = bench.add_derived({"status": "ok", "wall_s": 30.0, "fit_s": 25.0}, arch, 60000, 3, peak)
    assert "frac_peak_own" not in plain and plain["frac_peak_bf16"] is not None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_cpu_busy_sees_a_spinning_thread():
    """One thread spinning for the whole sample keeps about one of the CPUs busy."""
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    t.start()
    try:
        busy = bench.cpu_busy(0.5)
    finally:
        stop.set()
        t.join()
    assert busy is not None and 0.6 / os.cpu_count() <= busy <= 1.0


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


def test_sweep_runs_every_recipe_and_seed_and_ranks_by_validation(tmp_path) -> None:
    """benchmarks/sweep.py on a tiny folder data set: 2 recipes x 2 seeds, real trainings."""
    sweep = _load("sweep")
    rng = np.random.default_rng(0)
    for label, cols in (("left", slice(0, 14)), ("right", slice(14, 28))):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            img[:, cols] += 150
            Image.fromarray(img).save(tmp_path / "data" / label / f"{i}.png")
    out = tmp_path / "sweep"
    sweep.main(
        [
            "--data", str(tmp_path / "data"), "--seeds", "0", "1", "--out", str(out),
            "--common", "--model seed-mnist --epochs 2 --batch-size 8 --val-split 0.25",
            "--recipe", "notes=", "--recipe", "slow=--lr 1e-5",
        ]
    )  # fmt: skip
    result = json.loads((out / "sweep.json").read_text())
    runs = result["runs"]
    assert sorted((r["recipe"], r["seed"]) for r in runs) == [
        ("notes", 0), ("notes", 1), ("slow", 0), ("slow", 1)
    ]  # fmt: skip
    assert not any("error" in r for r in runs)
    for r in runs:  # the numbers are the run folders' own
        m = json.loads((out / f"{r['recipe']}-s{r['seed']}" / "metrics.json").read_text())
        assert r["test"] == m["test"]["accuracy"] and r["val_last"] == m["final"]["val_accuracy"]
    by_name = {s["recipe"]: s for s in result["summary"]}
    notes = [r["val_best"] for r in runs if r["recipe"] == "notes"]
    assert by_name["notes"]["val_best"] == pytest.approx(sum(notes) / 2)
    vals = [s["val_best"] for s in result["summary"]]
    assert vals == sorted(vals, reverse=True)  # ranked by validation, never by test


def test_bench_levers_relu_first_restores_the_notes_order_and_runs(capsys) -> None:
    """relu_first gives every block the notes' conv -> ReLU -> pool order (same logits), and
    a tiny interleaved run prints one line per variant with its ratio."""
    levers = _load("bench_levers")
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("seed-mnist")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        levers.relu_first(model)
        after = model(x)
    for block in model.features:
        assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU", "MaxPool2d"]
    torch.testing.assert_close(before, after)
    levers.main(["--images", "50", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "seed-mnist, batch 50, 50 images x 1 rounds" in out
    variants = ("cnnlab", "aten-pool", "aten-conv", "aten-wino", "nhwc-wgrad", "nchw")
    for v in (*variants, "relu-first", "fp32"):
        assert f"\n{v} " in out or out.startswith(v)
    assert out.count("cnnlab / this =") == 7
    # cnnlab trains with the fused max-pool + ReLU (and first block) where the kernel builds;
    # aten-pool without either, aten-conv with the pairs alone
    from cnnlab.models import winograd
    from cnnlab.models.pool_relu import ConvPoolReLU, PoolReLU, load_kernel

    kinds = {
        v: {type(m) for m in levers.build(v, "seed-mnist")[1].modules()}
        for v in ("cnnlab", "aten-pool", "aten-conv", "aten-wino")
    }
    built = load_kernel()[0] is not None
    wino = built and winograd.enabled()
    assert (PoolReLU in kinds["cnnlab"]) == (ConvPoolReLU in kinds["cnnlab"]) == built
    assert (winograd.WinogradConvPoolReLU in kinds["cnnlab"]) == wino
    assert PoolReLU not in kinds["aten-pool"] and torch.nn.MaxPool2d in kinds["aten-pool"]
    assert ConvPoolReLU not in kinds["aten-conv"] and (PoolReLU in kinds["aten-conv"]) == built
    assert winograd.WinogradConvPoolReLU not in kinds["aten-wino"]
    assert (ConvPoolReLU in kinds["aten-wino"]) == built
    # and its convolutions take NCHW weight gradients where that lever applies (not where the
    # Winograd kernel took them); nhwc-wgrad not
    from cnnlab.models.nchw_wgrad import NCHWWeightGradConv2d, cpu_lacks_avx512

    convs = {
        v: {type(m) for m in levers.build(v, "seed-neu")[1].modules()}
        for v in ("cnnlab", "nhwc-wgrad")
    }
    assert (NCHWWeightGradConv2d in convs["cnnlab"]) == (
        cpu_lacks_avx512() and levers.build("cnnlab", "seed-neu")[0].amp_dtype is None and not wino
    )
    assert NCHWWeightGradConv2d not in convs["nhwc-wgrad"]
    # cnnlab trains as `cnnlab train` does (bf16 autocast where it measured faster); fp32 never
    from cnnlab.precision import bf16_choice
    from cnnlab.runtime import setup

    faster = torch.bfloat16 if bf16_choice(setup("cpu").threads)[0] else None
    assert levers.build("cnnlab", "seed-mnist")[0].amp_dtype == faster
    assert levers.build("fp32", "seed-mnist")[0].amp_dtype is None
    assert levers.build("bf16", "seed-mnist")[0].amp_dtype == torch.bfloat16
    # the stem-fp32 variant: the first block in float32 under the autocast, same numbers
    block = create_model("seed-mnist").features[0]
    x = torch.rand(2, 1, 28, 28)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        got = levers.Fp32Block(block)(x)
    assert got.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(got, block(x))
    threads = torch.get_num_threads()
    levers.main(
        ["--images", "50", "--rounds", "1", "--variants", "cnnlab", "stem-fp32", "1-thread"]
    )
    out = capsys.readouterr().out
    assert "\nstem-fp32 " in out and "\n1-thread " in out and out.count("cnnlab / this =") == 2
    assert torch.get_num_threads() == threads  # the 1-thread variant gives the cores back


def test_ensemble_check_rows_by_hand() -> None:
    ens = _load("ensemble_check")
    truth = np.array([0, 1, 1])
    a = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])  # wrong on b.png
    b = np.array([[0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])  # wrong on a.png
    rows = ens.error_rows(["A", "B"], [a, b], truth, ["a.png", "b.png", "c.png"])
    assert rows == [
        {"runs": ["A"], "errors": ["b.png"]},
        {"runs": ["B"], "errors": ["a.png"]},
        {"runs": ["A", "B"], "errors": []},  # means 0.65 / 0.35 / 0.25: all right
    ]


def test_bench_cuda_step_graph_step_run_eagerly_trains_as_the_engine_does() -> None:
    """bench_cuda_step's GraphedStep without the capture (CPU): the warm-up that capture
    needs is undone, the fixed buffers carry each batch, and the epoch equals the engine's."""
    from cnnlab.models import create_model
    from cnnlab.runtime import setup
    from cnnlab.train.engine import train_one_epoch

    cuda_step = _load("bench_cuda_step")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (200,), generator=gen)
    rt = setup("cpu", bf16=False)
    torch.manual_seed(0)
    start = rt.place(create_model("seed-mnist"))
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    want = train_one_epoch(
        a, images, labels, optimizer=cuda_step.adam(a, capturable=False), batch_size=50,
        generator=torch.Generator().manual_seed(1), runtime=rt,
    )  # fmt: skip
    step = cuda_step.GraphedStep(b, cuda_step.adam(b, capturable=True), (50, 1, 28, 28),
                                 capture=False)  # fmt: skip
    got = cuda_step.graph_epoch(step, images, labels, 50, torch.Generator().manual_seed(1))
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["accuracy"] == want["accuracy"]
    for p0, pa, pb in zip(start.parameters(), a.parameters(), b.parameters(), strict=True):
        assert cuda_step.rel_err(pb - p0, pa - p0) < 1e-4  # Adam's updates, 4 steps


def test_bench_winograd_times_both_blocks(capsys):
    """bench_winograd.py runs the Winograd block and ATen's conv + fused pool at a shape and
    prints both medians and their ratio (where the kernels build)."""
    from cnnlab.models.pool_relu import load_kernel

    if load_kernel()[0] is None:
        pytest.skip("the fused kernels are not built here")
    wino = _load("bench_winograd")
    wino.main(["--shapes", "mnist2", "--batch", "2", "--calls", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert out.startswith("mnist2 (2x32x14x14 -> 64) round 1: winograd ")
    assert "ms, aten conv + fused pool " in out and out.rstrip().endswith("x")
