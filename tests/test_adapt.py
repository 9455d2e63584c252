"""BatchNorm adaptation (`cnnlab.adapt`, `cnnlab adapt`): the statistics are those of the
given images (checked against a plain functional forward pass), nothing else changes, and
bad input is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_train_helpers import write_bars_folder
from torch import nn

from cnnlab.adapt import adapt_batchnorm, batchnorm_layers
from cnnlab.cli import main
from cnnlab.train import TrainConfig, load_model, train
from cnnlab.train.checkpoint import read_safetensors


def small_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    return model.eval()


def first_bn_input(model: nn.Module, u8: torch.Tensor) -> torch.Tensor:
    """The first BatchNorm's input computed by hand: conv(x / 255) with the model's weights."""
    conv = model[0]
    return F.conv2d(u8.double() / 255, conv.weight.double(), conv.bias.double(), padding=1)


def images(n: int, seed: int, offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 200, (n, 1, 8, 8), generator=g) + offset).to(torch.uint8)


def test_statistics_are_the_images_mean_and_unbiased_variance() -> None:
    model = small_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(10, seed=1, offset=40)  # brighter than anything "trained"
    adapted = adapt_batchnorm(model, x)
    h = first_bn_input(model, x)
    bn = adapted[1]
    assert torch.allclose(bn.running_mean.double(), h.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(bn.running_var.double(), h.var((0, 2, 3), unbiased=True), rtol=1e-5)
    assert not adapted.training and not bn.training and bn.momentum == model[1].momentum
    # the input model is untouched; the copy differs only in the BatchNorm buffers
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    new = adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], new[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    # after adapting, the BatchNorm output over those images is normalised: mean 0, var ~1
    with torch.no_grad():
        z = bn(h.float()) - bn.bias[None, :, None, None]
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)


def test_several_batches_average_the_batch_statistics() -> None:
    model = small_bn_model()
    x = images(10, seed=2)
    adapted = adapt_batchnorm(model, x, batch_size=4)  # batches of 4, 3, 3
    parts = [first_bn_input(model, x[i]) for i in torch.tensor_split(torch.arange(10), 3)]
    mean = torch.stack([p.mean((0, 2, 3)) for p in parts]).mean(0)
    var = torch.stack([p.var((0, 2, 3), unbiased=True) for p in parts]).mean(0)
    assert torch.allclose(adapted[1].running_mean.double(), mean, atol=1e-6)
    assert torch.allclose(adapted[1].running_var.double(), var, rtol=1e-5)


@pytest.mark.parametrize("prior", [1.0, 16.0])
def test_prior_blends_in_the_trained_statistics(prior: float) -> None:
    model = small_bn_model()
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    x = images(6, seed=3)
    full, hedged = adapt_batchnorm(model, x), adapt_batchnorm(model, x, prior=prior)
    w = prior / (prior + 6)
    expect_mean = w * 0.3 + (1 - w) * full[1].running_mean
    expect_var = w * 2.0 + (1 - w) * full[1].running_var
    assert torch.allclose(hedged[1].running_mean, expect_mean, atol=1e-6)
    assert torch.allclose(hedged[1].running_var, expect_var, atol=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), images(4, seed=0))
    with pytest.raises(ValueError, match="at least 2"):
        adapt_batchnorm(small_bn_model(), images(1, seed=0))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="prior"):
            adapt_batchnorm(small_bn_model(), images(4, seed=0), prior=bad)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(bars folder, a tiny ResNet run (BatchNorm), a seed-mnist run (none)), 1 epoch each."""
    root = tmp_path_factory.mktemp("adapt")
    data = write_bars_folder(root / "bars", n_per_class=20, size=16)
    out = {}
    for model in ("resnet-tiny-pool", "seed-mnist"):
        cfg = TrainConfig(
            data=str(data),
            model=model,
            epochs=1,
            batch_size=20,
            seed=0,
            device="cpu",
            out=str(root / model),
        )
        train(cfg, progress=False, log=lambda _m: None)
        out[model] = root / model
    return data, out["resnet-tiny-pool"], out["seed-mnist"]


def _u8_folder(data: Path) -> torch.Tensor:
    files = sorted(f for f in data.rglob("*.png"))
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L")) for f in files]))[
        :, None
    ]


def test_cli_writes_an_adapted_copy_and_keeps_the_source(runs, tmp_path: Path, capsys) -> None:
    data, run, _ = runs
    src_bytes = (run / "model.safetensors").read_bytes()
    out = tmp_path / "adapted"
    code = main(["adapt", str(run), str(data), "--out", str(out), "--json"])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)
    assert (run / "model.safetensors").read_bytes() == src_bytes  # source untouched
    x = _u8_folder(data)
    assert rec["n_images"] == x.shape[0] == 60 and rec["prior"] == 0.0
    model, meta = load_model(run)
    _, new_meta = load_model(out)
    assert new_meta["adapted"] == {k: v for k, v in rec.items() if k != "model"}
    assert json.loads((out / "model.json").read_text()) == new_meta
    assert {k: v for k, v in new_meta.items() if k != "adapted"} == meta
    assert rec["batchnorm_layers"] == len(batchnorm_layers(model)) > 0
    expect = adapt_batchnorm(model, x).state_dict()
    got, _ = read_safetensors(out / "model.safetensors")
    assert all(torch.allclose(got[k].float(), expect[k].float(), atol=1e-6) for k in expect)
    old = model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], got[k])}
    assert changed and all("running_" in k or "num_batches" in k for k in changed)


def test_cli_refuses_bad_input_and_writes_nothing(runs, tmp_path: Path, capsys) -> None:
    data, run, seed_run = runs
    out = tmp_path / "x"
    assert main(["adapt", str(seed_run), str(data), "--out", str(out)]) == 2
    assert "no BatchNorm" in capsys.readouterr().err
    broken = tmp_path / "in"
    broken.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(broken / "ok.png")
    (broken / "bad.png").write_bytes(b"not a png")
    assert main(["adapt", str(run), str(broken), "--out", str(out)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["adapt", str(run), str(broken / "ok.png"), "--out", str(out)]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["adapt", str(run), str(data), "--out", str(run)]) == 2
    assert "new folder" in capsys.readouterr().err
    assert not out.exists()
