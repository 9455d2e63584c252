"""Convolution weight gradients from NCHW copies, on CPUs without AVX-512: same bits, less time.

cnnlab trains channels_last (NHWC), where oneDNN's forward and input-gradient kernels are
fastest. Its weight gradient is another matter on an AVX2-only CPU: there oneDNN has no
brgemm kernel for it and runs `jit:avx2` on the NHWC tensors, which on the Zen 3 box took
about 1.3x as long for seed-neu's second convolution (32 -> 64 channels at 100x100) as copying
the input and the output gradient to NCHW and running the same kernel on its blocked layout
(`ONEDNN_VERBOSE=1` names both): a seed-neu training step 1.09-1.12x faster. The gradients
are equal bit for bit (the same kernel and reduction order; tests/test_nchw_wgrad.py), so a
run gives the same weights either way.

Where it applies was measured (README, "Benchmark"): a stride-1 conv with at least 32 input
channels on an input of at least 48x48 (seed-neu's second and third convolutions); the copies
cost more than they save on small inputs (seed-mnist's 14x14) and with few channels.
Training swaps such convolutions in (`use_on_cpu`); `CNNLAB_NCHW_WGRAD=0` turns it off. A
block the Winograd kernel took (cnnlab.models.winograd, swapped in before) has no nn.Conv2d
left for this lever: on AVX2 CPUs seed-neu's take it only with `CNNLAB_WINOGRAD=0`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.runtime import cpu_flags, eager, switched_off

MIN_CHANNELS = 32  # input channels
MIN_SIDE = 48  # inputs of at least MIN_SIDE x MIN_SIDE pixels
MIN_PIXELS = MIN_SIDE * MIN_SIDE


def enabled_by_env() -> bool:
    """False when `CNNLAB_NCHW_WGRAD` is 0 / off / false / no."""
    return not switched_off("CNNLAB_NCHW_WGRAD")


def cpu_lacks_avx512(flags: set[str] | None = None) -> bool:
    """True on an x86 CPU with AVX2 but no AVX-512, where oneDNN's weight gradient is its
    `jit:avx2` kernel both ways (the case measured; elsewhere cnnlab leaves oneDNN alone)."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags and "avx512f" not in flags


class _NCHWWeightGrad(torch.autograd.Function):
    """conv2d whose backward takes the input gradient from the channels_last tensors and the
    weight and bias gradients from NCHW copies of them."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None

        def backward_of(g, x, weight, mask):
            return torch.ops.aten.convolution_backward(
                g, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask
            )

        gx = gw = gb = None
        if need_x:
            gx = backward_of(g, x, weight, [True, False, False])[0]
        if need_w or need_b:
            _, gw, gb = backward_of(
                g.contiguous(), x.contiguous(), weight.contiguous(), [False, need_w, need_b]
            )
        return gx, gw, gb, None, None, None, None


def takes(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `x` through `conv` (a swapped, so eligible, conv) gets NCHW weight gradients:
    a channels_last float32 CPU batch of at least 48x48 pixels, in eager mode with gradients
    on and no autocast. Anything else runs the plain conv."""
    return (
        eager()
        and torch.is_grad_enabled()
        and conv.weight.requires_grad
        and not torch.is_autocast_enabled("cpu")
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[2] * x.shape[3] >= MIN_PIXELS
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class NCHWWeightGradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters, same state_dict) whose weight gradient comes from
    NCHW copies where `takes` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes(self, x):
            return _NCHWWeightGrad.apply(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    """A plain undilated, ungrouped stride-1 `nn.Conv2d` with at least 32 input channels
    (dilated and grouped convolutions gave other last bits through the NCHW path)."""
    return (
        type(m) is nn.Conv2d
        and m.in_channels >= MIN_CHANNELS
        and tuple(m.stride) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _input_pixels(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    """Height x width of the input each eligible conv sees for one (C, H, W) image (a
    forward pass of one zero image in eval mode, without gradients)."""
    pixels: dict[nn.Module, int] = {}

    def note(m: nn.Module, args: tuple) -> None:  # a pre-hook returning None keeps the input
        pixels.setdefault(m, args[0].shape[-2] * args[0].shape[-1])

    hooks = [m.register_forward_pre_hook(note) for m in model.modules() if _eligible(m)]
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pixels


def swap_convs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Turn every eligible conv of `model` (plain, undilated, ungrouped, stride 1, at least 32
    input channels) into an `NCHWWeightGradConv2d` in place (same parameter objects, keys and
    hooks); with `input_shape` (C, H, W), only those whose input is at least 48x48 for such
    images. Returns how many. Each call still checks its input (`takes`)."""
    pixels = None if input_shape is None else _input_pixels(model, input_shape)
    swapped = 0
    for m in model.modules():
        if _eligible(m) and (pixels is None or pixels.get(m, 0) >= MIN_PIXELS):
            m.__class__ = NCHWWeightGradConv2d  # a subclass adding no state: only forward differs
            swapped += 1
    return swapped


def use_on_cpu(
    model: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    input_shape: tuple[int, ...],
) -> str | None:
    """Swap `model`'s convolutions that see inputs of at least 48x48 for images of
    `input_shape` (C, H, W), for training on an AVX2-only CPU in float32 (`amp_dtype` None);
    returns what happened, for the log and config.json, or None when the lever does not
    apply."""
    if device.type != "cpu" or amp_dtype is not None or not cpu_lacks_avx512():
        return None
    if not enabled_by_env():
        return "off (CNNLAB_NCHW_WGRAD=0)"
    swapped = swap_convs(model, input_shape)
    if not swapped:
        return None
    plural = "s" if swapped > 1 else ""
    return (
        f"from NCHW copies for {swapped} convolution{plural} (>= {MIN_CHANNELS} channels, "
        f"inputs of >= {MIN_SIDE}x{MIN_SIDE}; AVX2 CPU without AVX-512)"
    )
