"""What the network learned and what it computes: first-layer kernels and per-block feature maps.

The notes' central idea is that a CNN learns its own kernels; `kernel_weights` returns the
first conv layer's weights, `kernel_tiles` turns them into images on one shared scale (zero
is mid-gray), and `feature_maps` records the output of every conv block for an input. Layers
are found by type, not by attribute name, so every registered model works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d registered in `model`: the layer that looks at the pixels."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise CnnlabError("the model has no nn.Conv2d layer, so it has no kernels to show")


def kernel_weights(model: nn.Module) -> np.ndarray:
    """The first conv layer's weights as float32 (out_channels, in_channels, kh, kw).

    Behind a space-to-depth stem (nn.PixelUnshuffle(r) first, `resnet-tiny-pool`) they are
    given as the equivalent (r kh x r kw) kernels over the image's own channels.
    """
    conv = first_conv(model)
    w = conv.weight.detach().cpu().float()
    for m in model.modules():
        if m is conv:
            break
        if isinstance(m, nn.PixelUnshuffle):
            r = m.downscale_factor  # channel c*r*r + i*r + j holds pixel (r*y + i, r*x + j)
            o, cin, kh, kw = w.shape
            w = w.reshape(o, cin // (r * r), r, r, kh, kw).permute(0, 1, 4, 2, 5, 3)
            w = w.reshape(o, cin // (r * r), kh * r, kw * r)
            break
    return w.numpy()


def kernel_tiles(weights: np.ndarray) -> np.ndarray:
    """Kernels as images in [0, 1] on one shared scale: 0.5 + w / (2 max|w|), zero = mid-gray.

    (out, 3, kh, kw) -> (out, kh, kw, 3) colour tiles; any other input depth -> (out, kh, kw)
    gray tiles of the mean over input channels (exact for one channel). One scale for all
    kernels keeps their strengths comparable.

    Examples
    --------
    >>> kernel_tiles(np.array([[[[-2.0, 0.0, 1.0]]]]))
    array([[[0.  , 0.5 , 0.75]]])
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"weights must be (out, in, kh, kw), got shape {w.shape}")
    tiles = w.transpose(0, 2, 3, 1) if w.shape[1] == 3 else w.mean(axis=1)
    top = np.abs(tiles).max() if tiles.size else 0.0
    return 0.5 + tiles / (2 * top) if top > 0 else np.full_like(tiles, 0.5)


def conv_blocks(model: nn.Module) -> list[list[str]]:
    """The conv blocks of `model` as groups of module names, in forward order.

    A block starts at a child module holding an nn.Conv2d and runs on through the
    parameter-free children after it (activation, pooling, dropout); nn.Sequential children
    holding several such blocks are opened up. SeedCNN gives [["features.0"],
    ["features.1"], ["features.2", "flatten"]]; `feature_maps` keeps a block's last output
    that is still an image (4-D with h, w > 1), here features.2's.
    """
    groups: list[list[str]] = []
    open_group = False

    def holds_conv(m: nn.Module) -> bool:
        return any(isinstance(s, nn.Conv2d) for s in m.modules())

    def walk(prefix: str, module: nn.Module) -> None:
        nonlocal open_group
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if holds_conv(child):
                inner = [c for c in child.children() if holds_conv(c)]
                if isinstance(child, nn.Sequential) and len(inner) > 1:
                    walk(f"{full}.", child)
                else:
                    groups.append([full])
                    open_group = True
            elif open_group and next(child.parameters(), None) is None:
                groups[-1].append(full)
            else:
                open_group = False

    if isinstance(model, nn.Conv2d):
        return [[""]]
    walk("", model)
    if not groups:
        raise CnnlabError("the model has no nn.Conv2d layer, so it has no conv blocks")
    return groups


def _is_image(t: object) -> bool:
    return torch.is_tensor(t) and t.ndim == 4 and t.shape[2] > 1 and t.shape[3] > 1


@torch.inference_mode()
def _block_outputs(
    model: nn.Module, x: torch.Tensor, groups: list[list[str]], *, strict: bool
) -> list[tuple[str, str, torch.Tensor]]:
    """Run x once; per group (head, member, output): the last member still giving image maps."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(_m: nn.Module, _inputs: object, output: object) -> None:
            if torch.is_tensor(output):
                outputs[name] = output.detach().float().cpu().clone()  # before in-place ops

        return hook

    handles = [modules[n].register_forward_hook(recorder(n)) for g in groups for n in g]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    result = []
    for group in groups:
        kept = None
        for n in group:
            if not _is_image(outputs.get(n)):
                break
            kept = n
        if kept is None:
            if strict:
                raise CnnlabError(f"--layer: '{group[0]}' does not output (N, C, h, w) maps")
            continue
        result.append((group[0], kept, outputs[kept].contiguous()))
    return result


def feature_maps(
    model: nn.Module, x: torch.Tensor, *, layers: Sequence[str] | None = None
) -> list[tuple[str, torch.Tensor]]:
    """The output (N, C, h, w) after each conv block for input x (N, C, H, W), in order.

    `layers` names modules to record instead (`model.named_modules()` names). Each entry is
    (name, maps on the CPU); the model runs in eval mode and its training flag is restored.

    Examples
    --------
    >>> from cnnlab.models import create_model
    >>> maps = feature_maps(create_model("seed-mnist"), torch.rand(1, 1, 28, 28))
    >>> [(n, tuple(t.shape)) for n, t in maps]
    [('features.0', (1, 32, 14, 14)), ('features.1', (1, 64, 7, 7))]
    """
    if layers:
        modules = dict(model.named_modules())
        unknown = [n for n in layers if n not in modules or n == ""]
        if unknown:
            raise CnnlabError(f"--layer: the model has no layer '{unknown[0]}'")
        groups = [[n] for n in layers]
    else:
        groups = conv_blocks(model)
    return [(head, t) for head, _, t in _block_outputs(model, x, groups, strict=bool(layers))]


def last_block_output(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the module giving the last conv block's output (after activation and pooling).

    Found by running x (one image is enough) through the model; Grad-CAM's default layer.

    Examples
    --------
    >>> from cnnlab.models import create_model
    >>> last_block_output(create_model("seed-neu"), torch.rand(1, 1, 200, 200))
    'features.2'
    """
    found = _block_outputs(model, x, conv_blocks(model), strict=False)
    if not found:
        raise CnnlabError("no conv block of the model outputs (N, C, h, w) maps")
    return found[-1][1]


def strongest_channels(maps: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """Indices of the k channels of maps (C, h, w) with the largest mean, strongest first."""
    m = np.asarray(maps, dtype=np.float64)
    means = m.reshape(m.shape[0], -1).mean(axis=1)
    return np.argsort(-means, kind="stable")[: max(0, k)]
