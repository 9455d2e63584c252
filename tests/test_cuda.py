"""The CUDA paths give what the CPU gives: every model's gradients, the augmentation, a whole
run with its data resident on the GPU, bf16 autocast, resume across devices, the time-budget
probe, predict / Grad-CAM / export of a GPU-trained run, and torchrun with NCCL.

Skipped without a CUDA device (CI has none); `benchmarks/gpu_check.sh` runs them on a lent
GPU machine. The CPU is the reference: cuDNN convolutions run in TF32 by default (about 3e-4
relative error each), so float32 results are compared by relative norm with room for that.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_helpers import bars_dataset, write_bars_folder

from cnnlab.backends import load_predictor
from cnnlab.data.augment import AUGMENTS, augment
from cnnlab.models import create_model, list_models, model_kwargs
from cnnlab.runtime import setup
from cnnlab.train import TrainConfig, train, train_one_epoch
from cnnlab.train.resume import resume_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
TF32_REL = 1e-2  # relative norm error allowed for float32 on cuDNN (TF32 convolutions)


def rel_err(got: torch.Tensor, want: torch.Tensor, floor: float = 0.0) -> float:
    """||got - want|| / max(||want||, floor), in float64 on the CPU."""
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    return float((g - w).norm() / max(float(w.norm()), floor, 1e-30))


def _quiet(_m: str) -> None:
    pass


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(data="synthetic", model="seed-mnist", epochs=3, batch_size=20, val_split=0.2)
    return TrainConfig(**{**base, **kw, "out": str(out)})


def _record(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_the_cpu_gradients_on_cuda(
    name: str, channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logits with cuDNN's default TF32 convolutions; gradients in plain float32 (TF32 off),
    since a ReLU whose input rounds to the other side of 0 moves a BatchNorm bias's gradient
    by a percent even between two CPU memory formats (resnet-neu, 2026-12-04)."""
    kw = model_kwargs(name)
    torch.manual_seed(0)
    cpu = create_model(name)
    gpu = copy.deepcopy(cpu).to(CUDA)
    if channels_last:
        gpu = gpu.to(memory_format=torch.channels_last)
    x = torch.rand(
        8, kw["in_channels"], *kw["image_size"], generator=torch.Generator().manual_seed(1)
    )
    y = torch.arange(8) % kw["num_classes"]
    xg = x.to(CUDA)
    if channels_last:
        xg = xg.contiguous(memory_format=torch.channels_last)
    cpu.train(), gpu.train()
    with torch.no_grad():
        assert rel_err(gpu(xg), cpu(x)) < TF32_REL  # cuDNN's default: TF32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    F.cross_entropy(cpu(x), y).backward()
    F.cross_entropy(gpu(xg), y.to(CUDA)).backward()
    want = torch.cat([p.grad.flatten() for p in cpu.parameters()])
    got = torch.cat([q.grad.flatten() for q in gpu.parameters()])
    assert got.device.type == "cuda"
    assert rel_err(got, want) < 5e-3
    for (pname, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        # a parameter whose gradient nearly cancels is judged against the whole gradient
        assert rel_err(q.grad, p.grad, floor=1e-2 * float(want.norm())) < 5e-2, pname


@pytest.mark.parametrize("name", [n for n in AUGMENTS if n != "none"])
def test_augmentation_on_the_gpu_draws_and_computes_what_the_cpu_does(name: str) -> None:
    """The draws come from a CPU generator, so a seed gives the same batch on either device."""
    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    want = augment(x, AUGMENTS[name], torch.Generator().manual_seed(7))
    got = augment(x.to(CUDA), AUGMENTS[name], torch.Generator().manual_seed(7))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)


def test_sgd_steps_on_cuda_follow_the_cpu_steps() -> None:
    """The engine's epoch on each device from the same weights and the same batch order."""
    ds = bars_dataset(120, 16)
    images, labels = ds.images[:80], ds.labels[:80]
    torch.manual_seed(0)
    start = create_model("seed-mnist", num_classes=3, image_size=(16, 16))
    out = {}
    for dev in ("cpu", "cuda"):
        rt = setup(dev)
        model = rt.place(copy.deepcopy(start))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        stats = train_one_epoch(
            model,
            images.to(rt.device),
            labels.to(rt.device),
            optimizer=opt,
            batch_size=20,
            generator=torch.Generator().manual_seed(3),
            runtime=rt,
        )
        out[dev] = (stats, [p.detach().cpu() for p in model.parameters()])
    assert out["cuda"][0]["steps"] == out["cpu"][0]["steps"] == 4
    assert out["cuda"][0]["loss"] == pytest.approx(out["cpu"][0]["loss"], rel=1e-3)
    for p0, pc, pg in zip(start.parameters(), out["cpu"][1], out["cuda"][1], strict=True):
        # the update each device made, compared: TF32 rounding, not a different step
        assert rel_err(pg - p0, pc - p0) < 2 * TF32_REL


def test_a_cuda_run_trains_on_data_resident_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.train.run as run_module

    seen = []
    real = run_module.train_one_epoch

    def spy(model, images_u8, labels, **kw):
        device = next(model.parameters()).device.type
        seen.append((images_u8.device.type, labels.device.type, device))
        return real(model, images_u8, labels, **kw)

    monkeypatch.setattr(run_module, "train_one_epoch", spy)
    run = tmp_path / "run"
    ds = bars_dataset()
    train(_config(run, device="cuda", augment="digits"), ds, progress=False, log=_quiet)
    assert seen and set(seen) == {("cuda", "cuda", "cuda")}
    runtime = _record(run, "config.json")["runtime"]
    assert runtime["device"].startswith("cuda") and runtime["amp_dtype"] is None
    assert runtime["channels_last"] is True
    assert runtime["pool_relu"] is None and runtime["weight_grads"] is None  # CPU-only kernels
    # chance is 1/3; the same run on the CPU scores 0.79-0.90 over seeds 0-2
    assert _record(run, "metrics.json")["test"]["accuracy"] >= 0.6

    images = ds.images[ds.splits["test"]]
    on_gpu = load_predictor(run, device="cuda").logits(images)
    on_cpu = load_predictor(run, device="cpu").logits(images)
    assert on_gpu.device.type == "cpu"  # predictors hand logits back on the CPU
    assert rel_err(on_gpu, on_cpu) < TF32_REL
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).float().mean() >= 0.95


def test_bf16_autocast_on_cuda_trains_and_is_recorded(tmp_path: Path) -> None:
    rt = setup("cuda", bf16=True)
    assert rt.amp_dtype == torch.bfloat16
    assert setup("cuda").amp_dtype is None  # float32 unless asked for
    run = tmp_path / "bf16"
    train(_config(run, device="cuda", bf16=True), bars_dataset(), progress=False, log=_quiet)
    assert _record(run, "config.json")["runtime"]["amp_dtype"] == "bfloat16"
    assert _record(run, "metrics.json")["test"]["accuracy"] >= 0.75  # CPU float32: 0.9-1.0
    model = create_model("seed-mnist", num_classes=3, image_size=(16, 16)).to(CUDA)
    x = torch.rand(8, 1, 16, 16, device=CUDA)
    with rt.autocast():
        low = model(x)
    assert low.dtype == torch.bfloat16
    assert rel_err(low.float(), model(x)) < 5e-2  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_resumes_on_the_other_device(tmp_path: Path, first: str, then: str) -> None:
    """Train on a GPU box, finish on a CPU one (and back): checkpoints carry no device."""
    run = tmp_path / "run"
    ds = bars_dataset(120, 12)
    cfg = _config(run, epochs=2, batch_size=16, device=first, augment="digits")
    train(cfg, ds, progress=False, log=_quiet)
    logs: list[str] = []
    train(
        resume_config(run, epochs=4, device=then), ds, progress=False, log=logs.append, resume=True
    )
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 4
    assert _record(run, "config.json")["runtime"]["device"].startswith(then)
    assert any(f"augment digits, {then}, " in m for m in logs)  # the run's "training ..." line
    assert _record(run, "metrics.json")["test"]["accuracy"] >= 0.6


def test_the_time_budget_probe_times_the_gpu(tmp_path: Path) -> None:
    """The probe synchronises the GPU, so its epoch time is real: of the order of the run's own
    epochs (history.csv, timed after each epoch's results reach the CPU), not the launch
    time of asynchronous work; and 600 s keeps all 3 epochs."""
    run = tmp_path / "budget"
    train(_config(run, device="cuda", time_budget=600), bars_dataset(), progress=False, log=_quiet)
    budget = _record(run, "config.json")["time_budget"]
    assert budget["epochs"] == 3
    epochs = [float(r["seconds"]) for r in csv.DictReader((run / "history.csv").open())]
    assert 0.1 * min(epochs) <= budget["measured_epoch_s"] <= 10 * max(epochs)


def test_predict_gradcam_and_export_of_a_gpu_trained_run(tmp_path: Path, cli) -> None:
    from cnnlab.explain.gradcam import grad_cam_images
    from cnnlab.predict import predict_files
    from cnnlab.train import load_model

    data = write_bars_folder(tmp_path / "bars", n_per_class=40, size=16)
    run = tmp_path / "run"
    r = cli(
        "train", "--data", str(data), "--model", "seed-mnist", "--epochs", "3",
        "--batch-size", "20", "--device", "cuda", "--out", str(run), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test"]["accuracy"] >= 0.7
    files = sorted(data.rglob("*.png"))[::10]
    gpu = predict_files(run, files, top_k=1, device="cuda")
    cpu = predict_files(run, files, top_k=1, device="cpu")
    assert [g["label"] for g in gpu] == [c["label"] for c in cpu]
    for g, c in zip(gpu, cpu, strict=True):
        assert g["probability"] == pytest.approx(c["probability"], abs=1e-3)

    model, _ = load_model(run)
    xt = bars_dataset(60, 16).images[:12]
    heat_gpu, probs_gpu = grad_cam_images(copy.deepcopy(model), xt, device="cuda")
    heat_cpu, probs_cpu = grad_cam_images(copy.deepcopy(model), xt, device="cpu")
    np.testing.assert_allclose(probs_gpu, probs_cpu, atol=1e-3)
    np.testing.assert_allclose(heat_gpu, heat_cpu, atol=2e-2)

    onnx_file = tmp_path / "m.onnx"
    r = cli("export", str(run), "-o", str(onnx_file))
    assert r.returncode == 0, r.stderr
    assert onnx_file.stat().st_size > 0


def test_torchrun_with_nccl_on_one_gpu(tmp_path: Path) -> None:
    data = write_bars_folder(tmp_path / "bars", n_per_class=20, size=16)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    r = subprocess.run(
        [*cmd, "-m", "cnnlab", "train", "--data", str(data), "--model", "seed-mnist",
         "--epochs", "2", "--batch-size", "16", "--device", "cuda", "--out", str(run)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(nccl)" in r.stdout + r.stderr
    assert (run / "model.safetensors").is_file()
    assert _record(run, "config.json")["runtime"]["device"].startswith("cuda")
