"""A 3x3 convolution block by Winograd's F(2x2, 3x3), fused with its 2x2 max-pool and ReLU.

The seed models' second block (and seed-neu's third) is Conv2d(C_in, C_out, 3, padding=1),
MaxPool2d(2), ReLU: on an AVX2 CPU that convolution is most of a training step and already
runs near the matmul peak (README, "Benchmark"), so the way left to go faster is to do less
arithmetic. Winograd's F(2x2, 3x3) computes each 2x2 block of outputs with 16 multiplies per
channel pair where the direct convolution needs 36 (2.25x fewer), and a 2x2 output block is
exactly one window of the pool after it, so `winograd.cpp` writes only the pooled output and
a 1-byte code, as the fused pool does. The filter transform U = G w G^T and its adjoint
(the weight gradient from the kernel's dU) are one matmul each, in torch.

Same function, other rounding: outputs and gradients agree with float64 to float32 rounding
(tests/test_winograd.py), not bit for bit with ATen. Used where it was measured to win: float32
training and inference on an x86 CPU with AVX2 and without AVX-512 (oneDNN's AVX-512 kernels
are twice as wide as this AVX2 one), channels a multiple of 16, in eager mode, outside
autocast. `CNNLAB_WINOGRAD=0` turns it off (the block then runs ATen's convolution and the
fused pool).

The residual CNNs' convolutions (3x3, no bias: a BatchNorm follows) use the same kernel's
backward in training (`WinogradGradConv2d`, `grads_on_cpu`): ATen's forward is the faster on
their 7x7 and 4x4 maps, the Winograd input and weight gradients the faster everywhere measured
(`--preset fast` fits 1.16x the steps in its 9.5 s on an AVX2 box; README, "Winograd gradients
for the ResNets").
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.pool_relu import PoolReLU, kernel_applies, load_kernel
from cnnlab.runtime import cpu_flags, switched_off

# F(2x2, 3x3)'s filter transform (Lavin & Gray, 2016); the input and output transforms
# (B^T, A^T) are written out in winograd.cpp.
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
CHANNEL_BLOCK = 16  # the kernel's GEMM works on 16 channels at a time


def enabled_by_env() -> bool:
    """False when `CNNLAB_WINOGRAD` is 0 / off / false / no."""
    return not switched_off("CNNLAB_WINOGRAD")


@functools.cache
def cpu_suits() -> bool:
    """True on an x86 CPU with AVX2 and FMA but no AVX-512: the kind measured to win."""
    flags = cpu_flags()
    return {"avx2", "fma"} <= flags and "avx512f" not in flags


def enabled() -> bool:
    """Whether blocks are swapped in here: the switch is on and the CPU is the kind measured."""
    return enabled_by_env() and cpu_suits()


def filter_transform(weight: torch.Tensor) -> torch.Tensor:
    """U^T: (G w G^T) for each (output, input) channel pair, (C_out, C_in, 3, 3) ->
    (16, C_out, C_in), as one (16, 9) x (9, C_out * C_in) matmul (an einsum of G, w and G^T
    with its autograd nodes took about twice as long a step on seed-mnist's filters)."""
    c_out, c_in = weight.shape[:2]
    u = _kron_g(weight.dtype, weight.device) @ weight.reshape(c_out * c_in, 9).t()
    return u.reshape(16, c_out, c_in)


def filter_transform_backward(dut: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight gradient from dU^T (16, C_out, C_in): the adjoint of `filter_transform`,
    in the weight's memory format (so autograd stores it without a copy)."""
    c_out, c_in = weight.shape[:2]
    dw = dut.reshape(16, c_out * c_in).t() @ _kron_g(dut.dtype, dut.device)
    return dw.reshape(c_out, c_in, 3, 3).contiguous(memory_format=_format_of(weight))


def _format_of(t: torch.Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format


@functools.cache
def _kron_g(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """G (x) G as a (16, 9) matrix: U's 4x4 = G w G^T for all channel pairs at once."""
    g = torch.tensor(G, dtype=torch.float64)
    return torch.kron(g, g).to(dtype=dtype, device=device)


def _kernel_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether winograd.cpp computes `x` through a swapped-in convolution of `weight`: a
    float32 channels_last CPU batch with the weight's input channels, outside autocast, in
    eager mode, the kernel built. Anything else runs ATen."""
    return (
        x.dim() == 4
        and x.shape[1] == weight.shape[1]
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and kernel_applies(x)
    )


class _WinogradPoolReLUFunction(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2)) for a float32 channels_last
    CPU batch through winograd.cpp; the filter transform and its adjoint inside, so a step
    adds no autograd nodes of its own."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        nchw: bool,
        transforms: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:  # type: ignore[override]
        lib, _ = load_kernel()
        b, c_in, h, w = x.shape
        c_out = weight.shape[0]
        ut, u = transforms  # (16, C_out, C_in) for the backward, (16, C_in, C_out) forward
        cl = torch.channels_last
        shape = (b, c_out, h // 2, w // 2)
        y = torch.empty(shape, dtype=x.dtype, memory_format=torch.contiguous_format if nchw else cl)
        code = None
        if any(ctx.needs_input_grad):
            code = torch.empty(shape, dtype=torch.uint8, memory_format=cl)
        bias = bias.contiguous()
        lib.winograd_pool_relu_forward_f32(
            x.data_ptr(), u.data_ptr(), bias.data_ptr(), y.data_ptr(),
            None if code is None else code.data_ptr(), int(nchw), b, h, w, c_in, c_out,
            torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, weight, ut, code)
        ctx.nchw = nchw
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        lib, _ = load_kernel()
        x, weight, ut, code = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        b, c_in, h, w = x.shape
        c_out = weight.shape[0]
        cl = torch.channels_last
        g = g.contiguous(memory_format=torch.contiguous_format if ctx.nchw else cl)
        gx = torch.empty(x.shape, dtype=x.dtype, memory_format=cl) if need_x else None
        dut = torch.empty_like(ut) if need_w else None
        db = torch.empty(c_out, dtype=g.dtype)
        lib.winograd_pool_relu_backward_f32(
            x.data_ptr(), ut.data_ptr(), g.data_ptr(), code.data_ptr(),
            None if gx is None else gx.data_ptr(), None if dut is None else dut.data_ptr(),
            db.data_ptr(), int(ctx.nchw), b, h, w, c_in, c_out, torch.get_num_threads(),
        )  # fmt: skip
        dw = None if dut is None else filter_transform_backward(dut, weight)
        return gx, dw, db if need_b else None, None, None


def takes(m: nn.Module) -> bool:
    """A Conv2d the kernel computes: 3x3, padding 1, stride 1, no dilation or groups, zero
    padding, a bias, input and output channels multiples of 16."""
    return _is_3x3_same(m) and m.bias is not None


def _is_3x3_same(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.in_channels % CHANNEL_BLOCK == 0
        and m.out_channels % CHANNEL_BLOCK == 0
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m.stride) == (1, 1)
        and tuple(m.padding) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


class WinogradConvPoolReLU(nn.Module):
    """`Conv2d(C_in, C_out, 3, padding=1)`, `MaxPool2d(2)`, `ReLU` as one Winograd kernel where
    it applies (a float32 channels_last CPU batch outside autocast), else the conv in ATen and
    `PoolReLU`. Holds the convolution's own `weight` and `bias`, so the state_dict's keys and
    the optimizer's parameters stay those of the plain block. `nchw_out`: return contiguous
    NCHW instead of channels_last (a last block before a Flatten, which then copies nothing:
    set by `feed_flatten`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.pool_relu = PoolReLU()
        self.nchw_out = False

    def transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U^T, U) of the current weights, made afresh each call: the weights' version
        counter cannot tell when to reuse them (fused Adam updates them without bumping it)."""
        with torch.no_grad():
            ut = filter_transform(self.weight)
            return ut, ut.transpose(1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_takes(x, self.weight):
            return _WinogradPoolReLUFunction.apply(
                x, self.weight, self.bias, self.nchw_out, self.transforms()
            )
        return self.pool_relu(F.conv2d(x, self.weight, self.bias, padding=1))


class _WinogradGradConvFunction(torch.autograd.Function):
    """conv2d(x, weight, padding=1) without bias: ATen's forward (faster than the Winograd one
    on the residual CNNs' 7x7 and 4x4 maps), the backward through winograd.cpp for a float32
    channels_last CPU batch (1.7-2x ATen's there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        lib, _ = load_kernel()
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        b, c_in, h, w = x.shape
        c_out = weight.shape[0]
        cl = torch.channels_last
        g = g.contiguous(memory_format=cl)
        ut = filter_transform(weight)  # (16, C_out, C_in)
        gx = torch.empty(x.shape, dtype=x.dtype, memory_format=cl) if need_x else None
        dut = torch.empty_like(ut) if need_w else None
        lib.winograd_conv_backward_f32(
            x.data_ptr(), ut.data_ptr(), g.data_ptr(),
            None if gx is None else gx.data_ptr(), None if dut is None else dut.data_ptr(),
            b, h, w, c_in, c_out, torch.get_num_threads(),
        )  # fmt: skip
        dw = None if dut is None else filter_transform_backward(dut, weight)
        return gx, dw


def takes_plain(m: nn.Module) -> bool:
    """A Conv2d `WinogradGradConv2d` computes: `takes`' shape, without a bias."""
    return _is_3x3_same(m) and m.bias is None


class WinogradGradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (3x3, padding 1, no bias; same parameters, same state_dict) whose input
    and weight gradients come from the Winograd kernel where `_kernel_takes` says so and a
    gradient is asked for; the forward is always ATen's. `grads_on_cpu` swaps it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
            and _kernel_takes(x, self.weight)
        ):
            return _WinogradGradConvFunction.apply(x, self.weight)
        return super().forward(x)


def grads_on_cpu(
    model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None
) -> str | None:
    """Swap (in place) each bias-free 3x3 Conv2d the kernel takes for a `WinogradGradConv2d`
    (the residual CNNs' ConvBN), for training on a CPU in float32 (`amp_dtype` None); returns
    what happened, for the log and config.json, or None when nothing applies."""
    if device.type != "cpu" or amp_dtype is not None or not cpu_suits():
        return None
    convs = [m for m in model.modules() if takes_plain(m)]
    if not convs:
        return None
    if not enabled_by_env():
        return "off (CNNLAB_WINOGRAD=0)"
    if load_kernel()[0] is None:
        return None  # no compiler: fuse_on_cpu's log line already says why
    for m in convs:
        m.__class__ = WinogradGradConv2d  # a subclass adding no state: only forward differs
    plural = "s" if len(convs) > 1 else ""
    return f"by Winograd F(2x2,3x3) for {len(convs)} 3x3 convolution{plural} without bias"


def feed_flatten(model: nn.Module) -> bool:
    """Make a Winograd block that ends a model's `features` return NCHW when the model then
    has a `flatten` (the seed models: features -> Flatten -> Dense): Flatten's NCHW order
    would otherwise copy the channels_last output, and its gradient back (two copies a step,
    3% of a seed-mnist step). Returns whether it did."""
    features, flatten = getattr(model, "features", None), getattr(model, "flatten", None)
    if not (isinstance(features, nn.Sequential) and isinstance(flatten, nn.Flatten)):
        return False
    last = features[-1] if len(features) else None
    blocks = list(last) if isinstance(last, nn.Sequential) else [last]
    if not blocks or not isinstance(blocks[0], WinogradConvPoolReLU):
        return False
    if any(type(m) is not nn.Identity for m in blocks[1:]):
        return False
    blocks[0].nchw_out = True
    return True
