"""Weight gradients from NCHW copies (cnnlab.models.nchw_wgrad) against torch's own conv2d
autograd and a float64 reference: the same gradients (bit for bit on the AVX2-only CPUs where
training uses it), where it applies and where not, and a training run with the same weights."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_train_helpers import bars_dataset

from cnnlab.models import create_model
from cnnlab.models import nchw_wgrad as nw
from cnnlab.train import TrainConfig, train

CL = torch.channels_last
EXACT = nw.cpu_lacks_avx512()  # the same oneDNN kernel both ways: equal bits expected


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    if EXACT:
        assert torch.equal(a, b)
    else:  # another oneDNN kernel may sum in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _count_backwards(monkeypatch) -> list[tuple]:
    """Record each call of the NCHW backward (the shape of its output gradient), so a test
    knows the path really ran rather than the plain conv."""
    calls: list[tuple] = []
    real = nw._NCHWWeightGrad.backward

    def spy(ctx, g):
        calls.append(tuple(g.shape))
        return real(ctx, g)

    monkeypatch.setattr(nw._NCHWWeightGrad, "backward", staticmethod(spy))
    return calls


def _grads(conv: torch.nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    conv(x).backward(g)
    grads = [x.grad, conv.weight.grad]
    return grads + ([conv.bias.grad] if conv.bias is not None else [])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c_in=st.integers(32, 40),
    c_out=st.integers(1, 24),
    size=st.integers(48, 56),
    kernel=st.sampled_from([1, 3, 5]),
    padding=st.integers(0, 2),
    bias=st.booleans(),
)
def test_gradients_are_the_plain_convs(c_in, c_out, size, kernel, padding, bias):
    """Input, weight and bias gradients equal nn.Conv2d's on the same channels_last tensors,
    and a float64 computation of the same; the output too."""
    torch.manual_seed(size)
    plain, ours = (
        torch.nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias).to(memory_format=CL)
        for _ in range(2)
    )
    ours.load_state_dict(plain.state_dict())
    assert nw.swap_convs(ours) == 1
    x = torch.randn(3, c_in, size, size).to(memory_format=CL)
    assert nw.takes(ours, x)
    out = ours(x)
    _same(out, plain(x))
    g = torch.randn_like(out)
    mine, theirs = _grads(ours, x, g), _grads(plain, x, g)
    for a, b in zip(mine, theirs, strict=True):
        _same(a, b)
    ref = plain.double()
    for a, b in zip(mine, _grads(ref, x.double(), g.double()), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-3)


def test_only_where_it_was_measured_to_win() -> None:
    """Small inputs, few channels, NCHW tensors, no gradients and autocast run the plain
    conv; the swap leaves 1-channel, strided, grouped and dilated convolutions alone."""
    conv = torch.nn.Conv2d(32, 8, 3, padding=1).to(memory_format=CL)
    nw.swap_convs(conv)
    big = torch.randn(2, 32, 48, 48).to(memory_format=CL)
    assert nw.takes(conv, big)
    assert not nw.takes(conv, torch.randn(2, 32, 47, 48).to(memory_format=CL))  # too small
    assert not nw.takes(conv, big.contiguous())  # NCHW: oneDNN blocks it already
    assert not nw.takes(conv, big.double())
    with torch.no_grad():
        assert not nw.takes(conv, big)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not nw.takes(conv, big)
    model = create_model("seed-neu")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    assert nw.swap_convs(model, (1, 200, 200)) == 2  # blocks 2 and 3, not the 1-channel stem
    assert [type(m) is nw.NCHWWeightGradConv2d for m in convs] == [False, True, True]
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    # by input size: seed-neu's block 3 sees 50x50 at 200 px, 24x24 at 96 px; seed-mnist 14x14
    assert nw.swap_convs(create_model("seed-neu", image_size=(96, 96)), (1, 96, 96)) == 1
    assert nw.swap_convs(create_model("seed-mnist"), (1, 28, 28)) == 0
    assert nw.swap_convs(create_model("resnet-neu-pool"), (1, 128, 128)) == 0
    assert nw.swap_convs(torch.nn.Conv2d(32, 8, 3, stride=2)) == 0
    assert nw.swap_convs(torch.nn.Conv2d(32, 8, 3, groups=2)) == 0
    assert nw.swap_convs(torch.nn.Conv2d(32, 8, 3, dilation=2)) == 0


def test_the_cpu_precision_and_switch_decide(monkeypatch) -> None:
    """Only an AVX2 CPU without AVX-512, in float32, on a CPU device; CNNLAB_NCHW_WGRAD=0
    turns it off and says so."""
    assert nw.cpu_lacks_avx512({"avx2", "fma"})
    assert not nw.cpu_lacks_avx512({"avx2", "avx512f", "avx512_bf16"})
    assert not nw.cpu_lacks_avx512({"neon"})
    cpu = torch.device("cpu")
    monkeypatch.setattr(nw, "cpu_lacks_avx512", lambda: True)
    neu = (1, 200, 200)
    assert nw.use_on_cpu(create_model("seed-neu"), cpu, torch.bfloat16, neu) is None
    assert nw.use_on_cpu(create_model("seed-neu"), torch.device("cuda"), None, neu) is None
    assert nw.use_on_cpu(create_model("seed-mnist"), cpu, None, (1, 28, 28)) is None
    assert nw.use_on_cpu(create_model("seed-neu"), cpu, None, neu) == (
        "from NCHW copies for 2 convolutions (>= 32 channels, inputs of >= 48x48; AVX2 CPU "
        "without AVX-512)"
    )
    monkeypatch.setenv("CNNLAB_NCHW_WGRAD", "0")
    model = create_model("seed-neu")
    assert nw.use_on_cpu(model, cpu, None, neu) == "off (CNNLAB_NCHW_WGRAD=0)"
    assert not any(isinstance(m, nw.NCHWWeightGradConv2d) for m in model.modules())
    monkeypatch.delenv("CNNLAB_NCHW_WGRAD")
    monkeypatch.setattr(nw, "cpu_lacks_avx512", lambda: False)
    assert nw.use_on_cpu(create_model("seed-neu"), cpu, None, neu) is None


def test_a_training_run_gives_the_same_weights(tmp_path, monkeypatch) -> None:
    """seed-mnist on 96x96 images (its second conv sees 32 channels at 48x48), float32, with
    the lever forced on and without it: the same weights; config.json says which ran (the
    Winograd block, which would take that conv, off: `CNNLAB_WINOGRAD=0`)."""
    monkeypatch.setenv("CNNLAB_WINOGRAD", "0")
    monkeypatch.setattr(nw, "cpu_lacks_avx512", lambda: True)
    calls = _count_backwards(monkeypatch)
    ds = bars_dataset(30, 96)

    def run(out: str) -> tuple[dict[str, torch.Tensor], str | None]:
        cfg = TrainConfig(
            data="x", model="seed-mnist", epochs=1, batch_size=6, out=str(tmp_path / out),
            device="cpu", bf16=False,
        )  # fmt: skip
        train(cfg, ds, progress=False, log=lambda _m: None)
        runtime = json.loads((tmp_path / out / "config.json").read_text())["runtime"]
        return load_file(tmp_path / out / "model.safetensors"), runtime["weight_grads"]

    weights, how = run("a")
    assert how.startswith("from NCHW copies for 1 convolution (")
    assert calls and all(shape[1:] == (64, 48, 48) for shape in calls)  # block 2, every step
    del calls[:]
    monkeypatch.setattr(nw, "cpu_lacks_avx512", lambda: False)  # the plain convs
    plain, how_plain = run("b")
    assert how_plain is None and not calls
    assert weights.keys() == plain.keys()
    for k in weights:
        _same(weights[k], plain[k])


def test_grad_of_a_frozen_input_is_skipped(monkeypatch) -> None:
    """The first layer's input needs no gradient: only weight and bias are computed, as F.conv2d."""
    calls = _count_backwards(monkeypatch)
    conv = torch.nn.Conv2d(32, 4, 3, padding=1).to(memory_format=CL)
    ref = torch.nn.Conv2d(32, 4, 3, padding=1).to(memory_format=CL)
    ref.load_state_dict(conv.state_dict())
    nw.swap_convs(conv)
    x = torch.randn(2, 32, 48, 48).to(memory_format=CL)
    conv(x).sum().backward()
    F.conv2d(x, ref.weight, ref.bias, padding=1).sum().backward()
    assert calls == [(2, 4, 48, 48)]
    _same(conv.weight.grad, ref.weight.grad)
    _same(conv.bias.grad, ref.bias.grad)
