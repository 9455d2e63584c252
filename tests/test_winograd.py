"""The Winograd F(2x2, 3x3) block (cnnlab.models.winograd): conv 3x3 + bias, 2x2 max-pool and
ReLU in one kernel, against float64 (hypothesis shapes, odd sizes), ATen's float32 block, its
fall-backs, which gradients it gives, and a training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pool_relu import bars_run, channels_last, seed_mnist_run

from cnnlab.models import create_model
from cnnlab.models import pool_relu as pr
from cnnlab.models import winograd as wg

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _fresh_kernel():
    pr.load_kernel.cache_clear()
    yield
    pr.load_kernel.cache_clear()


@pytest.fixture
def kernel() -> None:
    """The library must build (the pool tests skip without a compiler; so do these)."""
    lib, how = pr.load_kernel()
    if lib is None:
        pytest.skip(f"the fused kernels are not built here: {how}")


def plain_block(x, w, b):
    return torch.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))


def wino_block(w: torch.Tensor, b: torch.Tensor) -> wg.WinogradConvPoolReLU:
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w), conv.bias.copy_(b)
    return wg.WinogradConvPoolReLU(conv)


def ran_winograd(y: torch.Tensor) -> bool:
    return y.grad_fn is not None and "Winograd" in type(y.grad_fn).__name__


def random_shapes(side: int):
    """Hypothesis over batch, channels in 16s, heights and widths 2..side (odd ones too) and a
    seed: the kernel's tests against float64."""
    return lambda test: settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )(
        given(
            b=st.integers(1, 3),
            c_in=st.sampled_from([16, 32]),
            c_out=st.sampled_from([16, 32, 48]),
            h=st.integers(2, side),
            w=st.integers(2, side),
            seed=st.integers(0, 2**16),
        )(test)
    )


def test_filter_transform_is_g_w_gt_and_its_adjoint_autograds() -> None:
    """U^T[i*4+j, c_out, c_in] = (G w[c_out, c_in] G^T)[i, j], written out pair by pair; the
    hand-written backward is what autograd makes of the forward, in the weight's layout."""
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64).requires_grad_()
    g = torch.tensor(wg.G, dtype=torch.float64)
    ut = wg.filter_transform(w)
    assert ut.shape == (16, 3, 2)
    for o in range(3):
        for c in range(2):
            torch.testing.assert_close(ut[:, o, c].reshape(4, 4), g @ w[o, c] @ g.T)
    dut = torch.randn(16, 3, 2, dtype=torch.float64)
    ut.backward(dut)
    torch.testing.assert_close(wg.filter_transform_backward(dut, w.detach()), w.grad)
    wcl = torch.randn(8, 16, 3, 3).contiguous(memory_format=CL)
    dw = wg.filter_transform_backward(torch.randn(16, 8, 16), wcl)
    assert dw.stride() == wcl.stride()


@random_shapes(13)
def test_matches_float64(kernel, b, c_in, c_out, h, w, seed) -> None:
    """Random shapes, odd sizes included: output, input, weight and bias gradients within
    float32 rounding of float64, away from windows whose top two values (or the maximum and
    0) are too close for float32 to order them as float64 does."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, h, w, generator=gen)
    wt = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.2
    bias = torch.randn(c_out, generator=gen) * 0.5
    g = torch.randn(b, c_out, h // 2, w // 2, generator=gen)
    conv64 = F.conv2d(x.double(), wt.double(), bias.double(), padding=1)
    top2 = conv64[:, :, : h // 2 * 2, : w // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2)
    top2 = top2.reshape(*g.shape, 4).topk(2, dim=-1).values
    clear = ((top2[..., 0] - top2[..., 1]) > 1e-3) & (top2[..., 0].abs() > 1e-3)
    g = torch.where(clear, g, 0.0)
    x64 = x.double().requires_grad_()
    w64, b64 = wt.double().requires_grad_(), bias.double().requires_grad_()
    want = plain_block(x64, w64, b64)
    want.backward(g.double())
    block = wino_block(wt, bias)
    xx = channels_last(x, torch.float32).requires_grad_()
    got = block(xx)
    assert ran_winograd(got) and got.is_contiguous(memory_format=CL)
    got.backward(channels_last(g, torch.float32))
    assert xx.grad.is_contiguous(memory_format=CL)
    tol = {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(got.detach().double(), want.detach(), **tol)
    torch.testing.assert_close(xx.grad.double(), x64.grad, **tol)
    torch.testing.assert_close(block.weight.grad.double(), w64.grad, **tol)
    torch.testing.assert_close(block.bias.grad.double(), b64.grad, **tol)


@pytest.mark.parametrize(("c_in", "c_out", "side"), [(32, 64, 14), (64, 128, 25)])
def test_seed_sizes_repeat_bit_for_bit_and_agree_with_aten(kernel, c_in, c_out, side) -> None:
    """seed-mnist's second block and seed-neu's third (odd 25x25): the kernel ran, repeats
    bit for bit, and agrees with ATen's float32 block to float32 rounding."""
    torch.manual_seed(0)
    x = channels_last(torch.randn(6, c_in, side, side), torch.float32)
    wt, bias = torch.randn(c_out, c_in, 3, 3) * 0.1, torch.randn(c_out) * 0.1
    g = channels_last(torch.randn(6, c_out, side // 2, side // 2), torch.float32)
    runs = []
    for _ in range(2):
        block, xx = wino_block(wt, bias), x.clone().requires_grad_()
        y = block(xx)
        assert ran_winograd(y)
        y.backward(g)
        runs.append((y.detach(), xx.grad, block.weight.grad, block.bias.grad))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    xr, wr, br = x.clone().requires_grad_(), wt.clone().requires_grad_(), bias.clone()
    br.requires_grad_()
    ref = plain_block(xr, wr, br)
    ref.backward(g)
    for got, want in zip(runs[0], (ref.detach(), xr.grad, wr.grad, br.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_only_the_gradients_asked_for(kernel) -> None:
    """A frozen input, or frozen weights, get no gradient; the others are those of the full
    backward, bit for bit. Under no_grad (inference) the output is the training output."""
    torch.manual_seed(1)
    x = channels_last(torch.randn(3, 16, 9, 8), torch.float32)
    wt, bias = torch.randn(32, 16, 3, 3) * 0.2, torch.randn(32)
    g = channels_last(torch.randn(3, 32, 4, 4), torch.float32)
    block, xx = wino_block(wt, bias), x.clone().requires_grad_()
    y = block(xx)
    y.backward(g)
    full = (xx.grad, block.weight.grad, block.bias.grad)
    frozen_x = wino_block(wt, bias)
    frozen_x(x).backward(g)
    assert torch.equal(frozen_x.weight.grad, full[1]) and torch.equal(frozen_x.bias.grad, full[2])
    frozen_w = wino_block(wt, bias).requires_grad_(False)
    xx2 = x.clone().requires_grad_()
    frozen_w(xx2).backward(g)
    assert frozen_w.weight.grad is None and torch.equal(xx2.grad, full[0])
    with torch.no_grad():
        assert torch.equal(wino_block(wt, bias)(x), y.detach())


def test_falls_back_where_it_does_not_apply(kernel, monkeypatch) -> None:
    """NCHW memory, bf16 autocast and float64 run ATen's convolution and the fused pool: the
    plain block's numbers, bit for bit. Off by the switch, or on a CPU unlike the one measured
    (AVX-512), seed-mnist's second convolution stays an nn.Conv2d."""
    torch.manual_seed(2)
    x = torch.randn(2, 16, 6, 6)
    wt, bias = torch.randn(16, 16, 3, 3), torch.randn(16)
    block = wino_block(wt, bias)
    y = block(x)  # NCHW
    assert not ran_winograd(y) and torch.equal(y, plain_block(x, wt, bias))
    xc = channels_last(x, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(xc)
        assert not ran_winograd(y)
        assert torch.equal(y, pr.PoolReLU()(F.conv2d(xc, wt, bias, padding=1)))
    as64 = plain_block(x.double(), wt.double(), bias.double())
    assert torch.equal(wino_block(wt, bias).double()(x.double()), as64)
    if wg.enabled():
        model = create_model("seed-mnist")
        assert pr.fuse_pool_relu(model) == (2, 1, 1)
        assert isinstance(model.features[1][0], wg.WinogradConvPoolReLU)
    monkeypatch.setattr(wg, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    wg.cpu_suits.cache_clear()
    try:
        model = create_model("seed-mnist")
        assert pr.fuse_pool_relu(model) == (2, 1, 0)
    finally:
        wg.cpu_suits.cache_clear()
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    model = create_model("seed-mnist")
    assert pr.fuse_pool_relu(model) == (2, 1, 0)
    assert type(model.features[1][0]) is torch.nn.Conv2d


def test_which_convolutions_it_takes() -> None:
    """3x3, padding 1, stride 1, a bias, channels in 16s; not the 1-channel stem."""
    conv = torch.nn.Conv2d
    assert wg.takes(conv(32, 64, 3, padding=1))
    for other in (
        conv(1, 32, 3, padding=1),
        conv(24, 64, 3, padding=1),
        conv(32, 40, 3, padding=1),
        conv(32, 64, 3, padding=1, bias=False),
        conv(32, 64, 3, padding=1, stride=2),
        conv(32, 64, 3, padding=2, dilation=2),
        conv(32, 64, 5, padding=2),
        conv(32, 64, 3, padding=1, padding_mode="reflect"),
    ):
        assert not wg.takes(other), other


def test_training_run_with_winograd(kernel, tmp_path, monkeypatch) -> None:
    """seed-mnist with its second block by Winograd: config.json says so, and the weights
    stay within float32 rounding of the run with that convolution in ATen."""
    if not wg.enabled():
        pytest.skip("this CPU is not the kind the Winograd kernel is used on (AVX2, no AVX-512)")
    wino_run, how = seed_mnist_run(tmp_path / "wino")
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    aten_run, how_aten = seed_mnist_run(tmp_path / "aten")
    assert how.endswith(
        "2 layer pairs, 1 with the convolution before (1 input channel), "
        "1 with the convolution before by Winograd F(2x2,3x3)"
    )
    assert how_aten.endswith("2 layer pairs, 1 with the convolution before (1 input channel)")
    torch.manual_seed(0)
    start = create_model("seed-mnist", num_classes=3, image_size=(12, 12)).state_dict()
    for k, v in wino_run.items():
        moved = (aten_run[k] - start[k]).double()
        assert float((v - aten_run[k]).double().norm()) <= 1e-2 * float(moved.norm()), k


def test_nchw_output_for_flatten_is_the_same_numbers(kernel) -> None:
    """`nchw_out` (a last block before Flatten) returns the same values, contiguous NCHW, and
    the same gradients bit for bit; `feed_flatten` sets it on the seed models' last block only,
    and the model's logits and gradients do not change."""
    torch.manual_seed(3)
    x = channels_last(torch.randn(3, 32, 10, 10), torch.float32)
    wt, bias = torch.randn(64, 32, 3, 3) * 0.1, torch.randn(64) * 0.1
    g = torch.randn(3, 64, 5, 5)
    runs = []
    for nchw in (False, True):
        block, xx = wino_block(wt, bias), x.clone().requires_grad_()
        block.nchw_out = nchw
        y = block(xx)
        assert y.is_contiguous() == nchw and ran_winograd(y)
        y.backward(g)
        runs.append((y.detach(), xx.grad, block.weight.grad, block.bias.grad))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    if not wg.enabled():
        return
    torch.manual_seed(0)
    plain = create_model("seed-neu", image_size=(40, 40)).to(memory_format=CL)
    model = create_model("seed-neu", image_size=(40, 40)).to(memory_format=CL)
    model.load_state_dict(plain.state_dict())
    assert pr.fuse_on_cpu(model, torch.device("cpu")).endswith(
        "2 with the convolution before by Winograd F(2x2,3x3)"
    )
    assert [b[0].nchw_out for b in model.features[1:]] == [False, True]
    assert not wg.feed_flatten(torch.nn.Sequential(torch.nn.Flatten()))
    fused = wg.WinogradConvPoolReLU  # the reference: the same blocks, channels_last out
    ref = create_model("seed-neu", image_size=(40, 40)).to(memory_format=CL)
    ref.load_state_dict(plain.state_dict())
    pr.fuse_pool_relu(ref)
    assert all(not m.nchw_out for m in ref.modules() if isinstance(m, fused))
    xb = channels_last(torch.rand(4, 1, 40, 40), torch.float32)
    for m in (model, ref):
        m(xb).square().sum().backward()
    assert torch.equal(model(xb), ref(xb))
    for (k, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), k


# --- the residual CNNs' bias-free convolutions: ATen's forward, Winograd's gradients ---


def grad_conv(w: torch.Tensor) -> wg.WinogradGradConv2d:
    conv = wg.WinogradGradConv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


@random_shapes(11)
def test_plain_conv_gradients_match_float64(kernel, b, c_in, c_out, h, w, seed) -> None:
    """Random shapes, odd sizes included (the last 2x2 blocks half outside the map): the
    output is ATen's, the input and weight gradients within float32 rounding of float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, h, w, generator=gen)
    wt = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.2
    g = torch.randn(b, c_out, h, w, generator=gen)
    x64, w64 = x.double().requires_grad_(), wt.double().requires_grad_()
    F.conv2d(x64, w64, None, padding=1).backward(g.double())
    conv = grad_conv(wt)
    xx = channels_last(x, torch.float32).requires_grad_()
    got = conv(xx)
    assert ran_winograd(got)
    assert torch.equal(got.detach(), F.conv2d(xx.detach(), wt, None, padding=1))
    got.backward(channels_last(g, torch.float32))
    assert xx.grad.is_contiguous(memory_format=CL)
    tol = {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(xx.grad.double(), x64.grad, **tol)
    torch.testing.assert_close(conv.weight.grad.double(), w64.grad, **tol)


def test_plain_conv_repeats_and_gives_only_the_gradients_asked_for(kernel) -> None:
    """resnet-tiny-pool's 7x7 stage: the same bits twice; a frozen input or frozen weights
    get no gradient and the others are the full backward's bit for bit. NCHW input, float64,
    bf16 autocast and no_grad run ATen alone."""
    torch.manual_seed(4)
    x = channels_last(torch.randn(5, 16, 7, 7), torch.float32)
    wt = torch.randn(32, 16, 3, 3) * 0.2
    g = channels_last(torch.randn(5, 32, 7, 7), torch.float32)
    runs = []
    for _ in range(2):
        conv, xx = grad_conv(wt), x.clone().requires_grad_()
        conv(xx).backward(g)
        runs.append((xx.grad, conv.weight.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    frozen_x = grad_conv(wt)
    frozen_x(x).backward(g)
    assert torch.equal(frozen_x.weight.grad, runs[0][1])
    frozen_w, xx = grad_conv(wt).requires_grad_(False), x.clone().requires_grad_()
    frozen_w(xx).backward(g)
    assert frozen_w.weight.grad is None and torch.equal(xx.grad, runs[0][0])
    conv = grad_conv(wt)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, wt, None, padding=1))
    nchw = x.contiguous().requires_grad_()
    assert not ran_winograd(conv(nchw))
    assert not ran_winograd(grad_conv(wt).double()(x.double().requires_grad_()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ran_winograd(conv(x.clone().requires_grad_()))


def test_grads_on_cpu_swaps_the_bias_free_3x3_convs_only(kernel, monkeypatch) -> None:
    """In resnet-tiny-pool: the four 3x3 convolutions of its residual blocks (not the
    4-channel stem, not the 1x1 shortcut), the same state_dict keys and logits; nothing on
    CUDA, under bf16 autocast, on an AVX-512 CPU, or with the switch off (which it says)."""
    cpu = torch.device("cpu")

    def tiny() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("resnet-tiny-pool").to(memory_format=CL)

    assert wg.grads_on_cpu(tiny(), torch.device("cuda"), None) is None
    assert wg.grads_on_cpu(tiny(), cpu, torch.bfloat16) is None
    if not wg.enabled():
        assert wg.grads_on_cpu(tiny(), cpu, None) is None
        return
    plain, model = tiny(), tiny()
    how = wg.grads_on_cpu(model, cpu, None)
    assert how == "by Winograd F(2x2,3x3) for 4 3x3 convolutions without bias"
    swapped = [n for n, m in model.named_modules() if isinstance(m, wg.WinogradGradConv2d)]
    assert swapped == [f"stages.{s}.1.conv{c}.0" for s in (0, 1) for c in (1, 2)]
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = channels_last(torch.randn(4, 1, 28, 28), torch.float32)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    with monkeypatch.context() as mp:
        mp.setenv("CNNLAB_WINOGRAD", "0")
        model = tiny()
        assert wg.grads_on_cpu(model, cpu, None) == "off (CNNLAB_WINOGRAD=0)"
        assert not any(isinstance(m, wg.WinogradGradConv2d) for m in model.modules())
    monkeypatch.setattr(wg, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    wg.cpu_suits.cache_clear()
    try:
        assert wg.grads_on_cpu(tiny(), cpu, None) is None
    finally:
        monkeypatch.undo()
        wg.cpu_suits.cache_clear()


def test_training_run_with_winograd_gradients(kernel, tmp_path, monkeypatch) -> None:
    """resnet-tiny-pool trained with the Winograd gradients: config.json says so, and the
    weights stay within float32 rounding of the run with ATen's."""
    if not wg.enabled():
        pytest.skip("this CPU is not the kind the Winograd kernel is used on (AVX2, no AVX-512)")
    wino_run, how = bars_run(tmp_path / "wino", "resnet-tiny-pool", "conv_grads")
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    aten_run, how_aten = bars_run(tmp_path / "aten", "resnet-tiny-pool", "conv_grads")
    assert how == "by Winograd F(2x2,3x3) for 4 3x3 convolutions without bias"
    assert how_aten == "off (CNNLAB_WINOGRAD=0)"
    torch.manual_seed(0)
    start = create_model("resnet-tiny-pool", num_classes=3, image_size=(12, 12)).state_dict()
    for k, v in wino_run.items():
        if not v.is_floating_point():
            continue
        moved = (aten_run[k] - start[k]).double()
        assert float((v - aten_run[k]).double().norm()) <= 1e-2 * float(moved.norm()) + 1e-6, k
