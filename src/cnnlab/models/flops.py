"""Parameter and FLOP counts, computed analytically (no tracing).

FLOPs per image = 2 x multiply-adds of every Conv2d and Linear (the convention of most
papers; ReLU, pooling and bias adds are not counted).
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs for one image of shape (C, H, W): 2 x MACs over Conv2d and Linear layers.

    Output sizes come from one forward pass on a zero image, the MACs from the layer shapes:
    conv = C_out x H_out x W_out x (C_in / groups) x kH x kW, linear = in_features x out_features.
    """
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += m.in_features * m.out_features * (out.numel() // out.shape[-1])

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    p = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=p.device if p is not None else "cpu")
    try:
        with torch.inference_mode():
            model(x)  # one cheap forward pass, only to learn every layer's output size
    finally:
        for h in handles:
            h.remove()
    return 2 * macs
