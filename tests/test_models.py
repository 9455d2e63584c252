"""The model registry, the seed CNNs' architecture, Keras-style init and the FLOP count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.explain.features import kernel_weights
from cnnlab.models import (
    count_flops,
    count_parameters,
    create_model,
    describe_models,
    list_models,
    model_info,
)


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name: str) -> None:
    """timm-style registry loop: output shape, no NaN, every parameter gets a gradient."""
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(2, info.in_channels, *info.image_size)
    out = model(x)
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_seed_models_are_registered_with_the_notes_recipe() -> None:
    assert {"seed-mnist", "seed-neu"} <= set(list_models())
    mnist, neu = model_info("seed-mnist"), model_info("seed-neu")
    assert (mnist.in_channels, mnist.image_size, mnist.num_classes) == (1, (28, 28), 10)
    assert (neu.in_channels, neu.image_size, neu.num_classes) == (1, (200, 200), 6)
    for info, epochs in ((mnist, 3), (neu, 10)):
        assert info.recipe == {"optimizer": "adam", "lr": 1e-3, "batch_size": 50, "epochs": epochs}


def test_parameter_counts_match_keras_summary() -> None:
    """Keras model.summary() totals, computed by hand layer by layer."""
    # conv 1->32: 9*32+32; conv 32->64: 9*32*64+64; dense 7*7*64 -> 128; dense 128 -> 10
    mnist = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)
    # + conv 64->128; dense 25*25*128 -> 128; dense 128 -> 6
    neu = (
        (9 * 32 + 32)
        + (9 * 32 * 64 + 64)
        + (9 * 64 * 128 + 128)
        + (25 * 25 * 128 * 128 + 128)
        + (128 * 6 + 6)
    )
    assert count_parameters(create_model("seed-mnist")) == mnist == 421_642
    assert count_parameters(create_model("seed-neu")) == neu == 10_333_574


def test_flops_match_hand_computation() -> None:
    # MACs: conv1 32*28*28*(1*9), conv2 64*14*14*(32*9), fc1 3136*128, fc2 128*10
    macs = 32 * 28 * 28 * 9 + 64 * 14 * 14 * 32 * 9 + 3136 * 128 + 128 * 10
    assert count_flops(create_model("seed-mnist"), (1, 28, 28)) == 2 * macs == 8_482_304
    macs_neu = (
        32 * 200 * 200 * 9
        + 64 * 100 * 100 * 32 * 9
        + 128 * 50 * 50 * 64 * 9
        + 80_000 * 128
        + 128 * 6
    )
    assert count_flops(create_model("seed-neu"), (1, 200, 200)) == 2 * macs_neu


def test_intermediate_shapes_follow_the_keras_code() -> None:
    model = create_model("seed-mnist")
    x = torch.zeros(3, 1, 28, 28)
    shapes = []
    for block in model.features:
        x = block(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(3, 32, 14, 14), (3, 64, 7, 7)]
    neu = create_model("seed-neu")
    assert neu.fc1.in_features == 128 * 25 * 25


def test_resnet_tiny_shapes_and_flops_by_hand() -> None:
    """`fast`'s first model: stride-2 stem, two stride-2 residual blocks, GAP."""
    model = create_model("resnet-tiny")
    x = model.stem(torch.zeros(3, 1, 28, 28))
    assert x.shape == (3, 16, 14, 14)
    shapes = []
    for stage in model.stages:
        x = stage(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(3, 32, 7, 7), (3, 64, 4, 4)]
    # MACs: stem 16*14*14*9; block 1: 3x3 s2, 3x3, 1x1 shortcut at 7x7; block 2 at 4x4; fc
    macs = (
        16 * 196 * 9 + 32 * 49 * (16 * 9 + 32 * 9 + 16) + 64 * 16 * (32 * 9 + 64 * 9 + 32) + 64 * 10
    )
    assert count_flops(model, (1, 28, 28)) == 2 * macs == 3_297_664


def test_resnet_tiny_pool_shapes_flops_and_its_space_to_depth_stem() -> None:
    """`--preset fast`'s model: the stem on 2x2 patches folded into channels equals a 6x6
    stride-2 convolution of the image (weights rearranged), and the stages average-pool."""
    torch.manual_seed(0)
    model = create_model("resnet-tiny-pool").eval()
    x = torch.rand(3, 1, 28, 28)
    shapes, h = [], model.stem(x)
    assert h.shape == (3, 16, 14, 14)
    for stage in model.stages:
        h = stage(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(3, 32, 7, 7), (3, 64, 4, 4)]
    # MACs: stem 16*14*14*(4*9); block 1 at 7x7: 3x3, 3x3, 1x1; block 2 at 4x4; fc
    macs = 16 * 196 * 36 + 32 * 49 * (16 * 9 + 32 * 9 + 16) + 64 * 16 * (32 * 9 + 64 * 9 + 32)
    assert count_flops(model, (1, 28, 28)) == 2 * (macs + 64 * 10) == 3_467_008
    # unshuffled channel 4c + 2i + j holds pixel (2y + i, 2x + j): a 3x3 kernel over them is
    # the 6x6 kernel K[o, c, 2ky + i, 2kx + j] at stride 2 with 2 pixels of padding
    k = torch.from_numpy(kernel_weights(model))  # (16, 4, 3, 3) shown as (16, 1, 6, 6)
    assert k.shape == (16, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            model.stem[1][0](F.pixel_unshuffle(x, 2)), F.conv2d(x, k, stride=2, padding=2)
        )
        pooled = model.stages[1][0](model.stages[0](model.stem(x)))  # 7x7 -> 4x4, edge kept
        ref = model.stages[0](model.stem(x))
        torch.testing.assert_close(pooled[..., :3, :3], F.avg_pool2d(ref, 2))
        torch.testing.assert_close(pooled[..., 3, 3], ref[..., 6, 6])  # a 1-pixel window
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 1, 27, 27))  # odd sizes cannot be folded


def test_resnet_tiny_pool_exports_to_onnx_with_the_same_logits(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from cnnlab.export.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("resnet-tiny-pool").eval()
    meta = {"input": {"channels": 1, "size": [28, 28]}, "class_names": [str(i) for i in range(10)]}
    path = export_onnx(model, meta, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 28, 28)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


def test_resnet_neu_pool_pools_where_resnet_neu_strides() -> None:
    """`best`'s NEU model: resnet-neu's stem and stage 1, then a 2x2 average pool and stride-1
    convolutions; with resnet-neu's weights copied in, stage 2 equals the strided block run
    at stride 1 on the pooled map (one kernel, two ways to get to half size)."""
    torch.manual_seed(0)
    pool, plain = create_model("resnet-neu-pool").eval(), create_model("resnet-neu").eval()
    plain.load_state_dict(
        {k.replace("stages.1.1.", "stages.1.0.").replace("stages.2.1.", "stages.2.0."): v
         for k, v in pool.state_dict().items()}
    )  # fmt: skip
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        h = pool.stages[0](pool.stem(x))
        assert h.shape == (2, 24, 32, 32)
        torch.testing.assert_close(h, plain.stages[0](plain.stem(x)))
        block = plain.stages[1][0]
        block.conv1[0].stride = block.shortcut[0].stride = (1, 1)
        torch.testing.assert_close(pool.stages[1](h), block(F.avg_pool2d(h, 2)))
        assert pool(x).shape == (2, 6)


def _keras_order_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The notes' order written out with functional ops: conv (+ BN) -> ReLU -> max-pool 2."""
    if hasattr(model, "features"):  # seed models: ConvBlock = (conv, pool, relu)
        for block in model.features:
            x = F.max_pool2d(F.relu(block[0](x)), 2)
        return model.fc2(F.relu(model.fc1(model.flatten(x))))
    x = F.max_pool2d(F.relu(model.stem[0](x)), 2)  # ResNet: stem = (conv + BN, pool, relu)
    return model.fc(model.pool(model.stages(x)).flatten(1))


@pytest.mark.parametrize(
    "name", ["seed-mnist", "seed-neu", "resnet-digits", "resnet-neu", "resnet-neu-pool"]
)
def test_relu_after_pool_is_the_keras_order_in_value_and_gradient(name: str) -> None:
    """The blocks pool before their ReLU (faster); the notes' conv -> ReLU -> pool, written
    out by hand with the same weights, gives equal logits and parameter gradients."""
    torch.manual_seed(0)
    model = create_model(name)
    info = model_info(name)
    x = torch.randn(3, info.in_channels, *info.image_size)
    params = list(model.parameters())

    def logits_and_grads(forward) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = forward(x)
        return out.detach(), torch.autograd.grad(out.logsumexp(1).sum(), params)

    out, grads = logits_and_grads(model)
    ref_out, ref_grads = logits_and_grads(lambda t: _keras_order_forward(model, t))
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_keras_initialisation() -> None:
    """Glorot-uniform weights inside +-sqrt(6/(fan_in+fan_out)) with matching std; zero bias."""
    torch.manual_seed(0)
    model = create_model("seed-neu")
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            w = m.weight
            rf = w[0, 0].numel() if w.ndim == 4 else 1
            limit = math.sqrt(6 / (w.shape[1] * rf + w.shape[0] * rf))
            assert w.abs().max() <= limit
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
            assert torch.count_nonzero(m.bias) == 0


def test_factories_accept_other_shapes() -> None:
    model = create_model("seed-neu", in_channels=3, num_classes=4, image_size=(64, 48))
    out = model(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 4)
    assert model.fc1.in_features == 128 * 8 * 6
    # odd sizes floor like Keras' MaxPool2D: 29 -> 14 -> 7
    assert create_model("seed-mnist", image_size=(29, 29)).fc1.in_features == 64 * 7 * 7


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        create_model("seed-neu", image_size=(4, 4))


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(CnnlabError, match=r"unknown model 'resnet9000'.*seed-mnist.*seed-neu"):
        create_model("resnet9000")


def test_describe_models_rows() -> None:
    rows = {r["name"]: r for r in describe_models()}
    assert rows["seed-mnist"]["input_shape"] == [1, 28, 28]
    assert rows["seed-mnist"]["flops"] == 8_482_304
    assert rows["seed-neu"]["parameters"] == 10_333_574
