"""The training engine and a whole run: it learns, it is deterministic, the run folder holds
what it promises, checkpoints round-trip, and bad settings fail with the flag's name."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.utils.class_weight import compute_class_weight
from test_train_helpers import bars_dataset, train_tiny_run

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runtime import resolve_device, setup
from cnnlab.train import (
    TrainConfig,
    balanced_class_weights,
    evaluate,
    load_model,
    train,
    train_one_epoch,
)
from cnnlab.train.checkpoint import read_safetensors


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


def test_tiny_run_learns_and_writes_the_run_folder(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "model.safetensors",
        "model.json",
        "last.safetensors",
        "config.json",
        "split.json",
        "history.csv",
        "curves.png",
        "metrics.json",
    } <= names
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 48
    assert metrics["test"]["accuracy"] >= 0.8  # chance is 1/3
    rows = list(csv.DictReader((tiny_run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(r["val_loss"] for r in rows)
    split = json.loads((tiny_run / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (144, 48, 48)
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["config"]["lr"] == 1e-3 and cfg["config"]["batch_size"] == 20
    assert cfg["model_kwargs"] == {"in_channels": 1, "num_classes": 3, "image_size": [16, 16]}
    assert (tiny_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_file_is_self_contained(tiny_run: Path) -> None:
    """The .safetensors alone rebuilds the model; its metadata equals model.json."""
    model, meta = load_model(tiny_run / "model.safetensors")
    on_disk = json.loads((tiny_run / "model.json").read_text())
    assert {k: v for k, v in meta.items() if k != "epoch"} == on_disk
    assert meta["class_names"] == ["horizontal", "vertical", "diagonal"]
    assert meta["input"] == {
        "channels": 1,
        "size": [16, 16],
        "dtype": "uint8",
        "normalisation": {"scale": 1 / 255, "mean": 0.0, "std": 1.0},
    }
    weights = load_file(tiny_run / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    model2, _ = load_model(tiny_run)  # the run folder resolves to the same file
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(model(x), model2(x))


def test_last_checkpoint_holds_model_and_optimizer(tiny_run: Path) -> None:
    tensors, meta = read_safetensors(tiny_run / "last.safetensors")
    optim = json.loads(meta["cnnlab_optimizer"])
    assert optim["class"] == "Adam" and optim["epoch"] == 3
    assert optim["param_groups"][0]["lr"] == 1e-3 and optim["param_groups"][0]["eps"] == 1e-7
    n_params = len([k for k in tensors if k.startswith("model.")])
    assert len([k for k in tensors if k.endswith(".exp_avg_sq")]) == n_params
    model, _ = load_model(tiny_run / "last.safetensors")
    assert isinstance(model, torch.nn.Module)


def test_same_seed_gives_bit_identical_weights(tmp_path: Path) -> None:
    ds = bars_dataset(120, 12)

    def run(seed: int, out: str) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(
            data="x",
            model="seed-mnist",
            epochs=2,
            batch_size=16,
            seed=seed,
            out=str(tmp_path / out),
            device="cpu",
        )
        train(cfg, ds, progress=False, log=lambda _m: None)
        return load_file(tmp_path / out / "model.safetensors")

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_one_epoch_drops_last_partial_batch_and_updates() -> None:
    rt = setup("cpu", bf16=False)  # float32, whatever the CPU
    torch.manual_seed(0)
    model = create_model("seed-mnist", num_classes=3, image_size=(12, 12))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 256, (105, 1, 12, 12), dtype=torch.uint8)
    y = torch.randint(0, 3, (105,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = train_one_epoch(
        model,
        x,
        y,
        optimizer=opt,
        batch_size=50,
        generator=torch.Generator().manual_seed(0),
        runtime=rt,
    )
    assert out["n"] == 100  # 2 full batches of 50, the last 5 images dropped
    assert 0.0 <= out["accuracy"] <= 1.0 and np.isfinite(out["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_train_one_epoch_reports_the_mean_batch_loss() -> None:
    """lr=0 keeps the weights fixed, so loss and accuracy must equal a hand computation over
    the same seeded permutation: two batches of 50, the last 5 images dropped."""
    rt = setup("cpu", bf16=False, channels_last=False)
    torch.manual_seed(0)
    model = create_model("seed-mnist", num_classes=3, image_size=(12, 12))
    x = torch.randint(0, 256, (105, 1, 12, 12), dtype=torch.uint8)
    y = torch.randint(0, 3, (105,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(0)
    out = train_one_epoch(model, x, y, optimizer=opt, batch_size=50, generator=gen, runtime=rt)
    perm = torch.randperm(105, generator=torch.Generator().manual_seed(0))
    batches = [perm[:50], perm[50:100]]
    with torch.no_grad():
        logits = [model(x[b].double().div(255).float()) for b in batches]
    losses = [F.cross_entropy(lg, y[b]).item() for lg, b in zip(logits, batches, strict=True)]
    hits = sum((lg.argmax(1) == y[b]).sum().item() for lg, b in zip(logits, batches, strict=True))
    assert out["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert out["accuracy"] == hits / 100


def test_nan_validation_loss_still_leaves_a_model(tmp_path: Path, monkeypatch) -> None:
    """A diverged run (NaN val loss every epoch) keeps its last weights as the model."""
    import cnnlab.train.run as run_mod

    real = run_mod.evaluate

    def nan_loss(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(run_mod, "evaluate", nan_loss)
    cfg = TrainConfig(
        data="x",
        model="seed-mnist",
        epochs=2,
        batch_size=20,
        val_split=0.2,
        out=str(tmp_path / "nan"),
        device="cpu",
    )
    res = train(cfg, bars_dataset(120, 16), progress=False, log=lambda _m: None)
    assert res.best_epoch == 2
    best = load_file(tmp_path / "nan" / "model.safetensors")
    last, _ = read_safetensors(tmp_path / "nan" / "last.safetensors")
    assert torch.equal(best["fc2.weight"], last["model.fc2.weight"])


def test_evaluate_matches_a_plain_forward_pass() -> None:
    """Batched evaluation (last batch at its own size) = one big float forward pass."""
    rt = setup("cpu", bf16=False)  # float32, whatever the CPU
    torch.manual_seed(0)
    model = create_model("seed-mnist", num_classes=3, image_size=(12, 12)).eval()
    x = torch.randint(0, 256, (23, 1, 12, 12), dtype=torch.uint8)
    y = torch.randint(0, 3, (23,))
    out = evaluate(model, x, y, runtime=rt, batch_size=10)
    with torch.no_grad():
        ref = model(x.double().div(255).float())
    assert out["n"] == 23
    torch.testing.assert_close(out["logits"], ref, rtol=1e-5, atol=1e-5)
    assert out["loss"] == pytest.approx(F.cross_entropy(ref, y).item(), rel=1e-5)
    assert out["accuracy"] == pytest.approx((ref.argmax(1) == y).double().mean().item())


def test_balanced_class_weights_match_sklearn() -> None:
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    np.testing.assert_allclose(balanced_class_weights(y, 3).numpy(), ref, rtol=1e-6)
    assert balanced_class_weights(torch.tensor([0, 0]), 2)[1] == 0  # absent class


def test_class_weights_auto_is_recorded_and_trains(tmp_path: Path) -> None:
    ds = bars_dataset(90, 12, val=False)
    ds.splits["train"] = ds.splits["train"][ds.labels[ds.splits["train"]] != 2][:40].clone()
    keep = torch.cat([ds.splits["train"], torch.nonzero(ds.labels == 2).flatten()[:6]])
    ds.splits["train"] = keep
    cfg = TrainConfig(
        data="x",
        model="seed-mnist",
        epochs=1,
        batch_size=10,
        class_weights="auto",
        out=str(tmp_path / "w"),
        device="cpu",
    )
    res = train(cfg, ds, progress=False, log=lambda _m: None)
    w = res.config["class_weights"]
    counts = torch.bincount(ds.labels[keep], minlength=3).numpy()
    np.testing.assert_allclose(w, len(keep) / (3 * counts), rtol=1e-5)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    """Validation labels are deliberately wrong, so val loss rises as the model learns."""
    ds = bars_dataset(240, 16)
    val = ds.splits["val"]
    ds.labels[val] = (ds.labels[val] + 1) % 3
    logs: list[str] = []
    cfg = TrainConfig(
        data="x",
        model="seed-mnist",
        epochs=8,
        batch_size=20,
        val_split=0.2,
        patience=1,
        out=str(tmp_path / "es"),
        device="cpu",
    )
    res = train(cfg, ds, progress=False, log=logs.append)
    assert res.stopped_early
    assert len(res.history) < 8
    assert res.best_epoch == len(res.history) - 1
    assert any("early stop" in m for m in logs)
    best = load_file(tmp_path / "es" / "model.safetensors")
    last, _ = read_safetensors(tmp_path / "es" / "last.safetensors")
    assert not torch.equal(best["fc2.weight"], last["model.fc2.weight"])
    meta = json.loads(read_safetensors(tmp_path / "es" / "model.safetensors")[1]["cnnlab_model"])
    assert meta["epoch"] == res.best_epoch


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("epochs", 0, "--epochs"),
        ("batch_size", -5, "--batch-size"),
        ("lr", 0.0, "--lr"),
        ("lr", float("nan"), "--lr"),
        ("val_split", 1.0, "--val-split"),
        ("val_split", -0.1, "--val-split"),
        ("patience", 0, "--patience"),
        ("threads", 0, "--threads"),
    ],
)
def test_bad_settings_name_the_flag(field: str, value: object, flag: str, tmp_path) -> None:
    extra = {"val_split": 0.2} if field == "patience" else {}
    cfg = TrainConfig(data="x", model="seed-mnist", out=str(tmp_path), **extra)
    setattr(cfg, field, value)
    with pytest.raises(CnnlabError, match=flag):
        cfg.resolved()


def test_patience_without_validation_is_refused() -> None:
    with pytest.raises(CnnlabError, match="--patience needs"):
        TrainConfig(data="x", model="seed-mnist", patience=2).resolved()


def test_recipe_defaults_fill_in() -> None:
    c = TrainConfig(data="x", model="seed-neu").resolved()
    assert (c.epochs, c.batch_size, c.lr) == (10, 50, 1e-3)
    assert c.out.startswith("runs/seed-neu-") or c.out.startswith("runs\\seed-neu-")


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(CnnlabError, match="--device cuda"):
        resolve_device("cuda")


def test_unwritable_run_folder_is_refused_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = TrainConfig(data="x", model="seed-mnist", epochs=1, out=str(blocker / "run"))
    with pytest.raises(CnnlabError, match="cannot write the run folder"):
        train(cfg, bars_dataset(30, 12), progress=False, log=lambda _m: None)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage that is not safetensors", b"\xff" * 8 + b"{}", None],
    ids=["empty", "garbage", "bad-header", "truncated"],
)
def test_corrupt_model_files_are_clear_errors(tmp_path: Path, tiny_run: Path, content) -> None:
    bad = tmp_path / "bad.safetensors"
    if content is None:
        data = (tiny_run / "model.safetensors").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(CnnlabError, match=r"not a readable \.safetensors"):
        load_model(bad)


def test_safetensors_without_cnnlab_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CnnlabError, match="without cnnlab model metadata"):
        load_model(tmp_path / "plain.safetensors")


def test_run_folder_without_model(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match=r"no model\.safetensors"):
        load_model(tmp_path)
    with pytest.raises(CnnlabError, match="no such run folder"):
        load_model(tmp_path / "missing")


def test_bad_data_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(tmp_path / "no-such-data"), model="seed-mnist", out=str(out))
    with pytest.raises(CnnlabError):
        train(cfg, progress=False, log=lambda _m: None)
    assert not out.exists()
