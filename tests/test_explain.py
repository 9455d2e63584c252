"""Grad-CAM, kernels and feature maps: against a hand-written autograd reference, on every
registered model, and on a synthetic task where one patch decides the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.explain import (
    conv_blocks,
    default_layer,
    feature_maps,
    find_layer,
    grad_cam,
    grad_cam_images,
    kernel_tiles,
    kernel_weights,
    last_block_output,
    overlay,
)
from cnnlab.explain.features import strongest_channels
from cnnlab.models import create_model, list_models, model_info


def _reference_cam(a: torch.Tensor, head, target: torch.Tensor, size) -> torch.Tensor:
    """Grad-CAM written out by hand: activations a, the rest of the network `head`."""
    a = a.detach().clone().requires_grad_(True)
    logits = head(a)
    (g,) = torch.autograd.grad(logits[torch.arange(len(target)), target].sum(), a)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros_like(cam)  # an all-zero map stays zero
    for i, c in enumerate(cam):
        if c.max() > c.min():
            out[i] = (c - c.min()) / (c.max() - c.min())
    return out


def test_grad_cam_equals_a_hand_written_reference_at_both_layers() -> None:
    torch.manual_seed(0)
    m = create_model("seed-mnist").eval()
    x = torch.rand(3, 1, 28, 28)
    target = torch.tensor([3, 7, 0])

    def head_after_blocks(a: torch.Tensor) -> torch.Tensor:
        return m.fc2(torch.relu(m.fc1(m.flatten(a))))

    with torch.no_grad():
        a = m.features(x)  # (3, 64, 7, 7): the last block's output, the default layer
    heat, probs = grad_cam(m, x, target=target)
    ref = _reference_cam(a, head_after_blocks, target, (28, 28))
    assert (ref.amax((1, 2)) == 1).sum() >= 2  # most maps are not empty
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(m(x), 1))

    # an explicit layer: the last conv's output before its pool and (in-place) ReLU
    conv = m.features[1][0]
    with torch.no_grad():
        a = conv(m.features[0](x))  # (3, 64, 14, 14)
    heat, _ = grad_cam(m, x, target=target, layer=conv)
    ref = _reference_cam(
        a, lambda t: head_after_blocks(torch.relu(m.features[1][1](t))), target, (28, 28)
    )
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-4)


def test_grad_cam_defaults_to_the_predicted_class_and_leaves_the_model_untouched() -> None:
    torch.manual_seed(1)
    m = create_model("seed-mnist")
    m.train()
    m.fc1.weight.requires_grad_(False)  # a user's frozen layer stays frozen
    x = torch.rand(4, 1, 28, 28)
    heat, probs = grad_cam(m, x)
    heat_pred, _ = grad_cam(m, x, target=probs.argmax(1))
    torch.testing.assert_close(heat, heat_pred)
    assert m.training  # restored
    assert all(p.grad is None for p in m.parameters())
    assert not m.fc1.weight.requires_grad
    assert all(p.requires_grad for n, p in m.named_parameters() if n != "fc1.weight")
    with torch.inference_mode():  # inference tensors are accepted
        xi = x.clone()
    heat_i, _ = grad_cam(m, xi)
    torch.testing.assert_close(heat_i, heat)
    with torch.inference_mode():  # called from inside inference mode or no_grad
        heat_im, _ = grad_cam(m, xi)
    with torch.no_grad():
        heat_ng, _ = grad_cam(m, x)
    torch.testing.assert_close(heat_im, heat)
    torch.testing.assert_close(heat_ng, heat)


def test_grad_cam_rejects_bad_targets_and_layers() -> None:
    m = create_model("seed-mnist")
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="target classes"):
        grad_cam(m, x, target=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="shape"):
        grad_cam(m, x, target=torch.tensor([0]))
    with pytest.raises(ValueError, match="N, C, H, W"):
        grad_cam(m, x[0])
    with pytest.raises(CnnlabError, match=r"(N, C, h, w)"):
        grad_cam(m, x, layer=m.fc1)
    with pytest.raises(CnnlabError, match=r"no layer 'nope'.*features\.0\.0"):
        find_layer(m, "nope")
    with pytest.raises(CnnlabError, match=r"no nn\.Conv2d"):
        grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(1, 1, 2, 2))


@pytest.mark.parametrize("name", list_models())
def test_grad_cam_and_feature_maps_work_for_every_registered_model(name: str) -> None:
    info = model_info(name)
    m = create_model(name).eval()
    x = torch.rand(2, info.in_channels, *info.image_size)
    heat, probs = grad_cam(m, x)
    assert heat.shape == (2, *info.image_size)
    assert probs.shape == (2, info.num_classes)
    assert torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert all(p.grad is None for p in m.parameters())
    maps = feature_maps(m, x[:1])
    assert maps and all(t.ndim == 4 and t.shape[0] == 1 for _, t in maps)
    assert kernel_weights(m).shape[1] == info.in_channels


class ResidualNet(nn.Module):
    """BatchNorm, a residual block and global average pooling: what better models look like."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = ResidualBlock(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def test_blocks_are_found_by_type_in_residual_and_flat_models() -> None:
    torch.manual_seed(0)
    res = ResidualNet().eval()
    # the GAP child joins the last block but its 1x1 output is no image: the block output wins
    assert conv_blocks(res) == [["stem"], ["block", "pool"]]
    x = torch.rand(2, 3, 12, 12)
    assert last_block_output(res, x) == "block"
    assert default_layer(res, x) is res.block
    assert [(n, tuple(t.shape)) for n, t in feature_maps(res, x)] == [
        ("stem", (2, 8, 12, 12)),
        ("block", (2, 8, 12, 12)),
    ]
    with torch.no_grad():
        a = res.block(res.stem(x))
    heat, _ = grad_cam(res, x, target=torch.tensor([1, 2]))
    ref = _reference_cam(
        a, lambda t: res.fc(res.pool(t).flatten(1)), torch.tensor([1, 2]), (12, 12)
    )
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-4)

    flat = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 3),
    ).eval()
    assert conv_blocks(flat) == [["0", "1", "2"], ["3", "4", "5"]]
    xf = torch.rand(1, 1, 16, 16)
    maps = feature_maps(flat, xf)
    assert [(n, tuple(t.shape)) for n, t in maps] == [("0", (1, 4, 8, 8)), ("3", (1, 6, 8, 8))]
    with torch.no_grad():  # recorded after the in-place ReLU and the pooling
        want = F.max_pool2d(torch.relu(flat[0](xf)), 2)
    torch.testing.assert_close(maps[0][1], want)
    assert last_block_output(flat, xf) == "4"
    named = feature_maps(flat, xf, layers=["0"])  # the conv's own output, before its ReLU
    with torch.no_grad():
        torch.testing.assert_close(named[0][1], flat[0](xf))
    with pytest.raises(CnnlabError, match="no layer"):
        feature_maps(flat, xf, layers=["9"])
    with pytest.raises(CnnlabError, match="does not output"):
        feature_maps(flat, xf, layers=["6"])


def test_kernel_tiles_share_one_scale() -> None:
    w = np.zeros((2, 1, 3, 3))
    w[0, 0, 0, 0], w[1, 0, 2, 2] = 4.0, -2.0
    t = kernel_tiles(w)
    assert t.shape == (2, 3, 3)
    assert t[0, 0, 0] == 1.0 and t[1, 2, 2] == 0.25 and t[0, 1, 1] == 0.5
    w3 = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2) - 11  # -11 .. 12
    rgb = kernel_tiles(w3)
    assert rgb.shape == (2, 2, 2, 3)  # (out, kh, kw, RGB)
    assert rgb.max() == 1.0 and rgb.min() == pytest.approx(0.5 - 11 / 24)
    assert rgb[0, 1, 0, 2] == pytest.approx(0.5 + w3[0, 2, 1, 0] / 24)  # blue = input 2
    np.testing.assert_array_equal(kernel_tiles(np.zeros((1, 1, 3, 3))), np.full((1, 3, 3), 0.5))
    m = create_model("seed-mnist")
    np.testing.assert_array_equal(kernel_weights(m), m.features[0][0].weight.detach().numpy())


def test_strongest_channels_and_overlay() -> None:
    maps = np.stack([np.full((2, 2), v) for v in (0.1, 3.0, -1.0, 2.0)])
    assert strongest_channels(maps, 3).tolist() == [1, 3, 0]
    img = np.full((2, 3), 100, np.uint8)
    heat = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    from matplotlib import colormaps

    jet = np.rint(colormaps["jet"](heat)[..., :3] * 255)
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), np.full((2, 3, 3), 100))
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0), jet)
    want = np.rint(0.55 * 100 + 0.45 * jet).astype(np.uint8)
    np.testing.assert_array_equal(overlay(img[..., None], heat), want)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 1] = 200
    out = overlay(rgb, heat, alpha=0.5)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.rint(0.5 * rgb + 0.5 * jet).astype(np.uint8))
    with pytest.raises(ValueError, match="heat is"):
        overlay(img, heat[:, :2])
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(float), heat)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, heat, alpha=1.5)


# -- the synthetic task: one patch decides the class, a bright distractor does not ----------

SIZE, PATCH = 32, 8  # image and patch side, pixels


def patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 (n, 1, 32, 32): noise, a striped 8x8 patch (horizontal = class 0, vertical = 1)
    and a solid bright 8x8 distractor elsewhere. Returns images, labels, (row, col) of both."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 60, (n, 1, SIZE, SIZE)).astype(np.uint8)
    labels = rng.integers(0, 2, n)
    where = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        while True:
            r, c, dr, dc = rng.integers(0, SIZE - PATCH + 1, 4)
            if abs(r - dr) >= PATCH or abs(c - dc) >= PATCH:
                break
        patch = np.zeros((PATCH, PATCH), np.uint8)
        if labels[i] == 0:
            patch[::2, :] = 255
        else:
            patch[:, ::2] = 255
        imgs[i, 0, r : r + PATCH, c : c + PATCH] = patch
        imgs[i, 0, dr : dr + PATCH, dc : dc + PATCH] = 255
        where[i] = (r, c, dr, dc)
    return torch.from_numpy(imgs), torch.from_numpy(labels), where


class PatchNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU-pool, conv-ReLU, global average pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
            nn.Sequential(
                nn.Conv2d(8, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_heatmap_peaks_on_the_patch_that_decides_the_class(one_thread) -> None:
    torch.manual_seed(0)
    x, y, _ = patch_images(256, seed=0)
    model = PatchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # epochs
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 32):
            idx = perm[s : s + 32]
            loss = F.cross_entropy(model(x[idx].float() / 255), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, yt, where = patch_images(100, seed=1)
    heat, probs = grad_cam_images(model, xt, device="cpu")
    assert (probs.argmax(1) == yt.numpy()).mean() >= 0.95
    assert heat.shape == (100, SIZE, SIZE)
    margin = 2  # pixels: the map is upsampled from 16x16
    on_patch = on_distractor = 0
    for h, (r, c, dr, dc) in zip(heat, where, strict=True):
        pr, pc = np.unravel_index(h.argmax(), h.shape)
        on_patch += r - margin <= pr < r + PATCH + margin and c - margin <= pc < c + PATCH + margin
        on_distractor += dr <= pr < dr + PATCH and dc <= pc < dc + PATCH
    assert on_patch >= 90, on_patch
    assert on_distractor <= 5, on_distractor
    # the other class's heatmap is a different map: the explanation answers to the target
    other, _ = grad_cam_images(model, xt[:8], targets=1 - yt[:8], device="cpu")
    assert not np.allclose(other, heat[:8])
