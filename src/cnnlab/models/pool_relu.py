"""A fused 2x2 max-pool + ReLU for CPU training: ATen's numbers, a third of its memory traffic.

Every seed-model block ends in `MaxPool2d(2)` then `ReLU` (seed.py). ATen runs the pair as
three kernels and keeps an int64 index per output, so its backward zero-fills the input
gradient and scatters into it: on the Zen 5 box the pair took 29 % of a seed-neu training
step (benchmarks/bench_pool.py). `pool_relu.cpp` does each direction in one pass with a
1-byte code per output, and gives the same outputs and gradients bit for bit (ties, -0.0,
odd sizes; tests/test_pool_relu.py), so runs are reproducible with or without it.

A block whose convolution has one input channel (3x3, padding 1, stride 1, a bias, channels
a multiple of 8: the first block of both seed models, on grey images) is fused whole:
convolution, pool and ReLU in one pass that writes only the pooled output, and a backward
that gives the weight and bias gradients without the dense convolution gradient
(`ConvPoolReLU`; float32 only, and only while no input gradient is asked for: seed-mnist
trained 1.10x and seed-neu 1.07x the images/s on the Zen 3 box, README "Levers"). Its sums
run in another order than ATen's, so they differ from ATen's in the last bits;
`CNNLAB_FUSED_CONV=0` keeps the convolution in ATen (and the pool fused). A block whose
convolution has 16k input and output channels can run by Winograd's F(2x2, 3x3) with its pool
and ReLU (`winograd.py` / `winograd.cpp`, compiled into the same library).

The kernel is compiled on first use with the system's C++ compiler (about a second) into
`$CNNLAB_CACHE/kernels/`, keyed by its sources, the compiler and this CPU's flags; without a
compiler, or with `CNNLAB_FUSED_POOL=0`, cnnlab runs ATen's kernels as before.
Training and the PyTorch predictor (`predict`, `evaluate`, `serve`) swap the layers in
(`fuse_on_cpu`); the model file, export and explain tools see the plain layers.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.paths import cache_root
from cnnlab.runtime import eager, switched_off

SOURCES = tuple(Path(__file__).with_name(n) for n in ("pool_relu.cpp", "winograd.cpp"))
FLAG_SETS = (["-march=native"], [])  # this CPU's vector units first, then the compiler's default
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def enabled_by_env() -> bool:
    """False when `CNNLAB_FUSED_POOL` is 0 / off / false / no (ATen's kernels instead)."""
    return not switched_off("CNNLAB_FUSED_POOL")


def conv_enabled_by_env() -> bool:
    """False when `CNNLAB_FUSED_CONV` is 0 / off / false / no (first convolutions in ATen)."""
    return not switched_off("CNNLAB_FUSED_CONV")


def _cpu_flags() -> str:
    """This CPU's feature flags (Linux), part of the cache key since -march=native uses them."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    return next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")


def _build(compiler: str, out_dir: Path) -> Path:
    """Compile SOURCES into one shared library in `out_dir` (cached); raises OSError on
    failure."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    errors = []
    for flags in FLAG_SETS:
        cmd = [compiler, "-O3", "-std=c++17", "-fopenmp", "-shared", "-fPIC", *flags]
        texts = [src.read_text(encoding="utf-8") for src in SOURCES]
        key = "\n".join([*texts, version, *cmd, _cpu_flags()])
        lib = out_dir / f"pool_relu-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
        if lib.exists():
            return lib
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".pool_relu.", suffix=".so")
        os.close(fd)
        try:
            done = subprocess.run(
                [*cmd, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if done.returncode == 0:
                os.replace(tmp, lib)  # atomic: concurrent builds (torchrun ranks) both succeed
                return lib
            errors.append(done.stderr.strip().splitlines()[-1:] or ["failed"])
        finally:
            Path(tmp).unlink(missing_ok=True)
    names = " + ".join(src.name for src in SOURCES)
    raise OSError(f"{compiler} could not build {names}: {errors[-1][0]}")


@functools.cache
def load_kernel() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel library, or None and the reason it is not used (once a process)."""
    if not enabled_by_env():
        return None, "off (CNNLAB_FUSED_POOL=0)"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        return None, "no C++ compiler found (g++ / c++ / $CXX): ATen's kernels"
    try:
        path = _build(compiler, cache_root() / "kernels")
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"not built ({e}): ATen's kernels"
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("forward", "backward"):
        for dt in DTYPES.values():
            fn = getattr(lib, f"pool_relu_{name}_{dt}")
            fn.argtypes = [p, p, p, i64, i64, i64, i64, ctypes.c_int]
            fn.restype = None
    for name in ("conv_pool_relu_forward_f32", "conv_pool_relu_wgrad_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [p, p, p, p, p, i64, i64, i64, i64, ctypes.c_int]
        fn.restype = None
    c_int = ctypes.c_int
    lib.winograd_pool_relu_forward_f32.argtypes = [p] * 5 + [c_int] + [i64] * 5 + [c_int]
    lib.winograd_pool_relu_backward_f32.argtypes = [p] * 7 + [c_int] + [i64] * 5 + [c_int]
    lib.winograd_pool_relu_forward_f32.restype = None
    lib.winograd_pool_relu_backward_f32.restype = None
    lib.winograd_conv_backward_f32.argtypes = [p] * 5 + [i64] * 5 + [c_int]
    lib.winograd_conv_backward_f32.restype = None
    return lib, f"fused kernel ({path.name})"


class _PoolReLUFunction(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) on a channels_last CPU tensor through pool_relu.cpp."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lib, _ = load_kernel()
        b, c, h, w = x.shape
        cl = torch.channels_last
        y = torch.empty((b, c, h // 2, w // 2), dtype=x.dtype, memory_format=cl)
        code = None
        if ctx.needs_input_grad[0]:
            code = torch.empty(y.shape, dtype=torch.uint8, memory_format=cl)
        getattr(lib, f"pool_relu_forward_{DTYPES[x.dtype]}")(
            x.data_ptr(),
            y.data_ptr(),
            None if code is None else code.data_ptr(),
            b,
            h,
            w,
            c,
            torch.get_num_threads(),
        )
        ctx.save_for_backward(code)
        ctx.shape = x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lib, _ = load_kernel()
        (code,) = ctx.saved_tensors
        b, c, h, w = ctx.shape
        cl = torch.channels_last
        g = g.contiguous(memory_format=cl)
        gx = torch.empty(ctx.shape, dtype=g.dtype, memory_format=cl)
        getattr(lib, f"pool_relu_backward_{DTYPES[g.dtype]}")(
            g.data_ptr(), code.data_ptr(), gx.data_ptr(), b, h, w, c, torch.get_num_threads()
        )
        return gx


class _ConvPoolReLUFunction(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2)) for a float32 CPU image batch
    of one channel through pool_relu.cpp; gradients for the weight and bias only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lib, _ = load_kernel()
        b, _, h, w = x.shape
        c = weight.shape[0]
        x = x.contiguous()  # (B, 1, H, W): the same memory in either format
        wt = weight.detach().reshape(c, 9).t().contiguous()  # taps first: (9, C)
        cl = torch.channels_last
        y = torch.empty((b, c, h // 2, w // 2), dtype=x.dtype, memory_format=cl)
        code = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            code = torch.empty(y.shape, dtype=torch.uint8, memory_format=cl)
        lib.conv_pool_relu_forward_f32(
            x.data_ptr(), wt.data_ptr(), bias.data_ptr(), y.data_ptr(),
            None if code is None else code.data_ptr(), b, h, w, c, torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, code)
        ctx.channels = c
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        lib, _ = load_kernel()
        x, code = ctx.saved_tensors
        b, _, h, w = x.shape
        c = ctx.channels
        g = g.contiguous(memory_format=torch.channels_last)
        dwt = torch.empty((9, c), dtype=g.dtype)
        db = torch.empty(c, dtype=g.dtype)
        lib.conv_pool_relu_wgrad_f32(
            x.data_ptr(), g.data_ptr(), code.data_ptr(), dwt.data_ptr(), db.data_ptr(),
            b, h, w, c, torch.get_num_threads(),
        )  # fmt: skip
        return None, dwt.t().reshape(c, 1, 3, 3), db


def kernel_applies(x: torch.Tensor) -> bool:
    """Whether the fused kernel can take `x`: a 4-D float32 / bf16 channels_last CPU tensor
    of at least 2x2, in eager mode, with the kernel built. Anything else runs ATen."""
    return (
        eager()  # graphs record ATen's ops (export, torch.compile)
        and x.device.type == "cpu"
        and x.dtype in DTYPES
        and x.dim() == 4
        and x.shape[2] >= 2
        and x.shape[3] >= 2
        and x.numel() > 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and load_kernel()[0] is not None
    )


class PoolReLU(nn.Module):
    """`MaxPool2d(2)` then `ReLU`, fused: pool_relu.cpp where it applies, else the two ATen ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_applies(x):
            return _PoolReLUFunction.apply(x)
        return torch.relu(F.max_pool2d(x, 2))


class ConvPoolReLU(nn.Module):
    """`Conv2d(1, C, 3, padding=1)`, `MaxPool2d(2)`, `ReLU` as one kernel where it applies (a
    float32 CPU batch that needs no input gradient, outside autocast), else the conv in ATen
    and `PoolReLU`. Holds the convolution's own `weight` and `bias`, so the state_dict's keys
    and the optimizer's parameters stay those of the plain block."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.pool_relu = PoolReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not x.requires_grad
            and x.dim() == 4
            and x.shape[1] == 1
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and kernel_applies(x)
        ):
            return _ConvPoolReLUFunction.apply(x, self.weight, self.bias)
        return self.pool_relu(F.conv2d(x, self.weight, self.bias, padding=1))


def _is_plain_2x2(m: nn.Module) -> bool:
    """A MaxPool2d(2) with defaults: 2x2 windows, stride 2, no padding, floor, no indices."""

    def pair(v: object) -> tuple:
        return tuple(v) if isinstance(v, tuple | list) else (v, v)

    return (
        type(m) is nn.MaxPool2d
        and pair(m.kernel_size) == (2, 2)
        and pair(m.stride) == (2, 2)
        and pair(m.padding) == (0, 0)
        and pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )


def _is_grey_3x3(m: nn.Module) -> bool:
    """A Conv2d the fused first block takes: 1 input channel, 3x3, padding 1, stride 1, no
    dilation or groups, zero padding, a bias, and output channels in blocks of 8."""
    return (
        type(m) is nn.Conv2d
        and m.in_channels == 1
        and m.out_channels % 8 == 0
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m.stride) == (1, 1)
        and tuple(m.padding) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and m.bias is not None
    )


def fuse_pool_relu(
    model: nn.Module, *, conv: bool = True, winograd: bool = True
) -> tuple[int, int, int]:
    """Replace each `MaxPool2d(2), ReLU` pair inside an nn.Sequential of `model` (in place) by
    `PoolReLU(), Identity()`; a convolution right before one becomes, with both after it
    `Identity()`, `ConvPoolReLU` if it is a grey-image one (unless `conv` is False or
    `CNNLAB_FUSED_CONV=0`), or `WinogradConvPoolReLU` if that kernel takes it on this CPU
    (unless `winograd` is False or `CNNLAB_WINOGRAD=0`; cnnlab.models.winograd). Every layer
    keeps its index and the state_dict its keys. Returns (pairs, grey convolutions, Winograd
    convolutions) fused: all 0 when the kernel is off or cannot be built."""
    from cnnlab.models import winograd as wg  # it builds on this module's kernel and PoolReLU

    if load_kernel()[0] is None:
        return 0, 0, 0
    conv = conv and conv_enabled_by_env()
    winograd = winograd and wg.enabled()
    pairs = convs = winos = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if _is_plain_2x2(seq[i]) and type(seq[i + 1]) is nn.ReLU:
                seq[i], seq[i + 1] = PoolReLU(), nn.Identity()
                pairs += 1
                if conv and i > 0 and _is_grey_3x3(seq[i - 1]):
                    seq[i - 1], seq[i] = ConvPoolReLU(seq[i - 1]), nn.Identity()
                    convs += 1
                elif winograd and i > 0 and wg.takes(seq[i - 1]):
                    seq[i - 1], seq[i] = wg.WinogradConvPoolReLU(seq[i - 1]), nn.Identity()
                    winos += 1
    return pairs, convs, winos


def fuse_on_cpu(
    model: nn.Module, device: torch.device, *, conv: bool = True, winograd: bool = True
) -> str | None:
    """Fuse `model`'s pairs (with `conv`, its grey-image first convolution; with `winograd`,
    the convolutions the Winograd kernel takes) when it runs on a CPU (training or
    inference); returns what happened, for the log and config.json (None when there is
    nothing to say: CUDA, or a model without such pairs)."""
    if device.type != "cpu" or not any(_is_plain_2x2(m) for m in model.modules()):
        return None
    lib, how = load_kernel()
    if lib is None:
        return how
    pairs, convs, winos = fuse_pool_relu(model, conv=conv, winograd=winograd)
    if not pairs:
        return None
    if winos:
        from cnnlab.models.winograd import feed_flatten

        feed_flatten(model)  # the last block hands Flatten NCHW (no copy either way)
    return (
        f"{how}, {pairs} layer pairs"
        + (f", {convs} with the convolution before (1 input channel)" if convs else "")
        + (f", {winos} with the convolution before by Winograd F(2x2,3x3)" if winos else "")
    )
