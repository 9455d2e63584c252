"""The fused max-pool + ReLU kernel (cnnlab.models.pool_relu) against ATen's
`relu(max_pool2d(x, 2))`: outputs and gradients bit for bit, its fall-backs, and a training
run that gives the same weights with and without it; the fused first block (a 1-channel
convolution with its pool and ReLU) against float64 and ATen, its fall-backs and a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_train_helpers import bars_dataset

from cnnlab.models import create_model
from cnnlab.models import pool_relu as pr
from cnnlab.train import TrainConfig, train

CL = torch.channels_last
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


@pytest.fixture(autouse=True)
def _fresh_kernel():
    """Every test asks for the kernel afresh (it is cached once a process)."""
    pr.load_kernel.cache_clear()
    yield
    pr.load_kernel.cache_clear()


@pytest.fixture
def kernel() -> None:
    """The kernel must build wherever a C++ compiler is; without one, skip visibly."""
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler: the fused kernel is not built here (ATen runs instead)")
    lib, how = pr.load_kernel()
    assert lib is not None, how


def aten(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.max_pool2d(x, 2))


def fused(x: torch.Tensor) -> torch.Tensor:
    assert pr.kernel_applies(x)
    return pr.PoolReLU()(x)


def forward_backward(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xx = x.detach().requires_grad_()
    y = fn(xx)
    y.backward(g)
    return y.detach(), xx.grad


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit patterns (so -0.0 and +0.0 differ), shapes and memory formats."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def channels_last(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous(memory_format=CL)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 19),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    levels=st.sampled_from([3, 7, 1000]),  # few levels: many ties and exact zeros
    bf16=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_aten_bit_for_bit(kernel, b, c, h, w, levels, bf16, seed) -> None:
    """Random shapes (odd sizes included) with ties, zeros of both signs and negatives."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, (b, c, h, w), generator=gen) / levels
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.1, -0.0, x)  # some -0.0
    g = torch.randn(b, c, h // 2, w // 2, generator=gen)
    g = torch.where(torch.rand(g.shape, generator=gen) < 0.1, -0.0, g)
    x, g = channels_last(x, dtype), channels_last(g, dtype)
    want, got = forward_backward(aten, x, g), forward_backward(fused, x, g)
    assert_same_bits(got[0], want[0])
    assert_same_bits(got[1], want[1])
    assert got[1].is_contiguous(memory_format=CL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seed_neu_shapes_and_the_hand_checked_cases(kernel, dtype) -> None:
    """A seed-neu-sized layer, plus windows whose answer is known: a tie goes to the first
    position; an all -0.0 window gives -0.0 and no gradient; a negative window gives +0."""
    x = channels_last(torch.randn(4, 32, 50, 50), dtype)
    x[0, 0, :2, :2] = torch.tensor([[1.0, 1.0], [0.5, 1.0]])
    x[0, 1, :2, :2] = -0.0
    x[0, 2, :2, :2] = torch.tensor([[-3.0, -1.0], [-2.0, -4.0]])
    g = channels_last(torch.randn(4, 32, 25, 25), dtype)
    y, gx = forward_backward(fused, x, g)
    want = forward_backward(aten, x, g)
    assert_same_bits(y, want[0])
    assert_same_bits(gx, want[1])
    assert gx[0, 0, 0, 0] == g[0, 0, 0, 0] and (gx[0, 0, :2, :2] != 0).sum() == 1
    assert torch.signbit(y[0, 1, 0, 0]) and not gx[0, 1, :2, :2].any()
    assert y[0, 2, 0, 0] == 0 and not torch.signbit(y[0, 2, 0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_goes_where_aten_sends_it(kernel, dtype) -> None:
    """NaN wins the window (ATen's `isnan(val)` rule) and its gradient flows through the ReLU;
    only NaN payloads may differ, so NaN positions and the gradients' positions are compared."""
    x = channels_last(torch.rand(2, 3, 4, 4), dtype)
    x[0, 0, 0, 1] = float("nan")
    x[1, 2, 1, 0] = x[1, 2, 1, 1] = float("nan")
    g = channels_last(torch.randn(2, 3, 2, 2), dtype)
    g[1, 1, 0, 0] = float("nan")
    want, got = forward_backward(aten, x, g), forward_backward(fused, x, g)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_other_inputs_fall_back_to_aten(kernel) -> None:
    """NCHW, float64, a strided slice and tracing take ATen's kernels, same answers."""
    nchw = torch.randn(2, 3, 6, 6)
    sliced = channels_last(torch.randn(1, 4, 6, 8), torch.float32)[:, :, :, :6]
    cases = [nchw, nchw.double().contiguous(memory_format=CL), sliced]
    for x in cases:
        assert not pr.kernel_applies(x)
        assert torch.equal(pr.PoolReLU()(x), aten(x))
    traced = torch.jit.trace(pr.PoolReLU(), channels_last(torch.randn(1, 2, 4, 4), torch.float32))
    assert "max_pool2d" in str(traced.graph)


def test_fuse_keeps_the_layers_indices_and_the_weights(kernel, monkeypatch) -> None:
    """seed-neu's three pairs fused in place; same state_dict; one bf16 Adam step as ATen's
    (the Winograd blocks off: test_winograd.py)."""
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    torch.manual_seed(0)
    plain = create_model("seed-neu", image_size=(40, 40)).to(memory_format=CL)
    model = create_model("seed-neu", image_size=(40, 40)).to(memory_format=CL)
    model.load_state_dict(plain.state_dict())
    assert pr.fuse_pool_relu(model) == (3, 1, 0)  # under bf16 autocast the conv runs in ATen
    assert isinstance(model.features[0][0], pr.ConvPoolReLU)
    assert isinstance(model.features[1][1], pr.PoolReLU)
    assert isinstance(model.features[1][2], torch.nn.Identity)
    assert list(model.state_dict()) == list(plain.state_dict())
    x = channels_last(torch.rand(6, 1, 40, 40), torch.float32)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    for m in (plain, model):
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(m(x), y).backward()
        opt.step()
    for (k, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def seed_mnist_run(out: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A 2-epoch seed-mnist run on bars, with the kernel loaded afresh (the switches are read
    once a process); returns its weights and config.json's `runtime.pool_relu`."""
    return bars_run(out, "seed-mnist", "pool_relu")


def bars_run(out: Path, model: str, key: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """A 2-epoch run of `model` on 12x12 bars, with the kernel loaded afresh; returns its
    weights and config.json's `runtime[key]`."""
    pr.load_kernel.cache_clear()
    cfg = TrainConfig(data="x", model=model, epochs=2, batch_size=16, out=str(out), device="cpu")
    train(cfg, bars_dataset(120, 12), progress=False, log=lambda _m: None)
    runtime = json.loads((out / "config.json").read_text())["runtime"]
    return load_file(out / "model.safetensors"), runtime[key]


def test_training_run_is_the_same_with_and_without_the_kernel(kernel, tmp_path, monkeypatch):
    """A whole seed-mnist run: identical weights; config.json says which kernel ran (the
    first block's convolution in ATen: `CNNLAB_FUSED_CONV=0`, its own test below; the later
    ones too: `CNNLAB_WINOGRAD=0`, test_winograd.py)."""
    monkeypatch.setenv("CNNLAB_FUSED_CONV", "0")
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    fast, how_fast = seed_mnist_run(tmp_path / "fused")
    monkeypatch.setenv("CNNLAB_FUSED_POOL", "0")
    slow, how_slow = seed_mnist_run(tmp_path / "aten")
    assert how_fast.startswith("fused kernel") and how_fast.endswith("2 layer pairs")
    assert how_slow == "off (CNNLAB_FUSED_POOL=0)"
    assert fast.keys() == slow.keys()
    assert all(torch.equal(fast[k], slow[k]) for k in fast)


def test_a_compiler_that_fails_leaves_aten(monkeypatch, tmp_path: Path) -> None:
    """A broken $CXX: no kernel, a reason, and fusing does nothing."""
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'broken-c++: fatal error: no' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    lib, how = pr.load_kernel()
    assert lib is None and "not built" in how and "fatal error" in how
    model = create_model("seed-mnist")
    assert pr.fuse_pool_relu(model) == (0, 0, 0)
    assert pr.fuse_on_cpu(model, torch.device("cpu")) == how
    assert not list((Path(pr.cache_root()) / "kernels").glob("*.so"))  # no half-built library


def test_the_library_is_built_once_and_reused(kernel, monkeypatch) -> None:
    """The second process finds the cached library (same file, not rebuilt)."""
    lib_path = Path(pr.load_kernel()[0]._name)
    built = lib_path.stat().st_mtime_ns
    pr.load_kernel.cache_clear()
    assert Path(pr.load_kernel()[0]._name) == lib_path
    assert lib_path.stat().st_mtime_ns == built
    assert pr.fuse_on_cpu(create_model("resnet-tiny-pool"), torch.device("cpu")) is None


def test_the_torch_predictor_fuses_and_gives_the_same_logits(kernel, tmp_path, monkeypatch):
    """predict / evaluate / serve run the fused pairs on a CPU: logits bit for bit as ATen's,
    under both float32 and bf16 autocast; its `pool_relu` says which kernel ran (the first
    convolution in ATen here, `CNNLAB_FUSED_CONV=0`, and the second, `CNNLAB_WINOGRAD=0`;
    fused, see the next test and test_winograd.py)."""
    monkeypatch.setenv("CNNLAB_FUSED_CONV", "0")
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    from cnnlab.backends import TorchPredictor
    from cnnlab.train.checkpoint import load_model
    from cnnlab.train.engine import to_input

    ds = bars_dataset(60, 12)
    cfg = TrainConfig(
        data="x", model="seed-mnist", epochs=1, batch_size=16, out=str(tmp_path), device="cpu"
    )
    train(cfg, ds, progress=False, log=lambda _m: None)
    images = ds.images[:40]
    plain, _ = load_model(tmp_path)
    applied = []
    real = pr.kernel_applies
    monkeypatch.setattr(pr, "kernel_applies", lambda x: applied.append(real(x)) or applied[-1])
    with torch.inference_mode():
        want = plain.eval()(to_input(images))
    for bf16 in (False, True):
        pr.load_kernel.cache_clear()
        monkeypatch.setenv("CNNLAB_FUSED_POOL", "0")
        slow = TorchPredictor(tmp_path, device="cpu", bf16=bf16)
        assert slow.pool_relu == "off (CNNLAB_FUSED_POOL=0)"
        pr.load_kernel.cache_clear()  # the switch is read once a process: on again for `fast`
        monkeypatch.delenv("CNNLAB_FUSED_POOL")
        fast = TorchPredictor(tmp_path, device="cpu", bf16=bf16)
        assert fast.pool_relu.startswith("fused kernel") and fast.pool_relu.endswith(
            "2 layer pairs"
        )
        assert isinstance(fast.model.features[0][1], pr.PoolReLU)
        applied.clear()
        got = fast.logits(images)
        assert applied and all(applied)  # the kernel ran, not ATen's fallback
        assert_same_bits(got, slow.logits(images))
        if not bf16:
            assert torch.allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------- the fused first block


def conv_block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))


def fused_block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """The kernel's output and weight / bias gradients for a gradient g (set by the caller)."""
    conv = torch.nn.Conv2d(1, w.shape[0], 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w), conv.bias.copy_(b)
    return pr.ConvPoolReLU(conv)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    b=st.integers(1, 3),
    c=st.sampled_from([8, 16, 32]),
    h=st.integers(2, 13),
    w=st.integers(2, 13),
    seed=st.integers(0, 2**16),
)
def test_fused_first_block_matches_float64(kernel, b, c, h, w, seed) -> None:
    """Random shapes, odd sizes included: the output within float32 rounding of float64, the
    weight and bias gradients too, away from windows whose top two values (or the maximum and
    0) are too close for float32 to order them as float64 does."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h, w, generator=gen)
    wt, bias = torch.randn(c, 1, 3, 3, generator=gen), torch.randn(c, generator=gen) * 0.5
    g = torch.randn(b, c, h // 2, w // 2, generator=gen)
    conv64 = F.conv2d(x.double(), wt.double(), bias.double(), padding=1)
    top2 = conv64[:, :, : h // 2 * 2, : w // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2)
    top2 = top2.reshape(*g.shape, 4).topk(2, dim=-1).values
    clear = ((top2[..., 0] - top2[..., 1]) > 1e-4) & (top2[..., 0].abs() > 1e-4)
    g = torch.where(clear, g, 0.0)
    w64, b64 = wt.double().requires_grad_(), bias.double().requires_grad_()
    want = conv_block(x.double(), w64, b64)
    want.backward(g.double())
    block = fused_block(x, wt, bias)
    got = block(channels_last(x, torch.float32))
    assert got.is_contiguous(memory_format=CL)
    got.backward(channels_last(g, torch.float32))
    torch.testing.assert_close(got.detach().double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.bias.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


def test_fused_first_block_on_seed_neu_sizes_is_deterministic_and_close_to_aten(kernel) -> None:
    """A seed-neu batch: the kernel ran (not the fall-back), repeats bit for bit, and agrees
    with ATen's float32 block to float32 rounding."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 200, 200)
    wt, bias = torch.randn(32, 1, 3, 3) * 0.3, torch.randn(32) * 0.1
    g = channels_last(torch.randn(6, 32, 100, 100), torch.float32)
    runs = []
    for _ in range(2):
        block = fused_block(x, wt, bias)
        y = block(x)
        y.backward(g)
        runs.append((y.detach(), block.weight.grad, block.bias.grad))
    assert y.grad_fn is not None and "ConvPoolReLU" in type(y.grad_fn).__name__
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    w2, b2 = wt.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = conv_block(channels_last(x, torch.float32), w2, b2)
    ref.backward(g)
    torch.testing.assert_close(runs[0][0], ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0][1], w2.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(runs[0][2], b2.grad, rtol=1e-4, atol=1e-3)


def test_fused_first_block_falls_back_where_it_does_not_apply(kernel, monkeypatch) -> None:
    """An input that needs its gradient, bf16 autocast, float64 and `CNNLAB_FUSED_CONV=0`
    run ATen's convolution: the plain block's numbers, bit for bit."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 10, 10)
    wt, bias = torch.randn(8, 1, 3, 3), torch.randn(8)
    block = fused_block(x, wt, bias)
    plain = lambda v: conv_block(v, wt, bias)  # noqa: E731
    xg = x.clone().requires_grad_()
    y = block(xg)
    assert "ConvPoolReLU" not in type(y.grad_fn).__name__
    y.sum().backward()
    xr = x.clone().requires_grad_()
    plain(xr).sum().backward()
    assert torch.equal(xg.grad, xr.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(block(x), pr.PoolReLU()(F.conv2d(x, wt, bias, padding=1)))
    as64 = conv_block(x.double(), wt.double(), bias.double())
    assert torch.equal(fused_block(x, wt, bias).double()(x.double()), as64)
    monkeypatch.setenv("CNNLAB_FUSED_CONV", "0")
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    model = create_model("seed-mnist")
    assert pr.fuse_pool_relu(model) == (2, 0, 0)
    assert type(model.features[0][0]) is torch.nn.Conv2d


def test_training_run_with_the_fused_first_block(kernel, tmp_path, monkeypatch) -> None:
    """seed-mnist with its first block fused: config.json says so, and the weights stay within
    float32 rounding of the run with that convolution in ATen (Adam amplifies last bits);
    the second block's convolution in ATen in both (`CNNLAB_WINOGRAD=0`, test_winograd.py)."""
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    fused_run, how = seed_mnist_run(tmp_path / "fused")
    monkeypatch.setenv("CNNLAB_FUSED_CONV", "0")
    aten_run, how_aten = seed_mnist_run(tmp_path / "aten")
    assert how.endswith("2 layer pairs, 1 with the convolution before (1 input channel)")
    assert how_aten.endswith("2 layer pairs")
    torch.manual_seed(0)
    start = create_model("seed-mnist", num_classes=3, image_size=(12, 12)).state_dict()
    for k, v in fused_run.items():
        moved = (aten_run[k] - start[k]).double()
        assert float((v - aten_run[k]).double().norm()) <= 1e-2 * float(moved.norm()), k
