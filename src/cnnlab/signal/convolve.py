"""Convolution and cross-correlation of 1-D and 2-D arrays, exact like `scipy.signal`, but fast.

Two paths compute the same sums:

* direct: shift-and-accumulate, ``out += k[m] * x[window shifted by m]`` once per kernel
  weight, on torch tensors (multi-threaded element-wise ops, exact for integers);
* FFT: for float inputs and large kernels (see `_use_fft`), ``irfft(rfft(x) * rfft(k))``.

Every mode is a slice of the "full" convolution ``y[n] = sum_m x[m] k[n - m]``:
full (length N + K - 1), same (length N, starting at ``(K - 1) // 2``, scipy's centring, so an
even kernel has one more row/column of padding before than after) and valid (length
``|N - K| + 1``; like scipy, the inputs are swapped when the kernel is the larger one in every
dimension, and it is an error when neither input is at least as large as the other).
Cross-correlation is convolution with the kernel reversed along every axis.

Dtypes: two integer (or bool) inputs give an exact int64 result (scipy keeps the narrower input
dtype and can overflow: uint8 * uint8 wraps, we do not); otherwise the result has the promoted
float dtype (float32 with float32 stays float32; float16 is computed in float32). Complex input
is refused. NumPy in, NumPy out; a torch tensor as ``x`` gives a torch tensor back.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError

Mode = Literal["full", "same", "valid"]
Boundary = Literal["fill", "reflect", "symm", "wrap"]
Method = Literal["auto", "direct", "fft"]
MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "reflect", "wrap")

FFT_WEIGHTS_PER_LOG2 = 6  # direct cost per weight vs FFT cost per log2(size), measured
FFT_MIN_KERNEL = 32  # kernel weights below which FFT never wins (measured, benchmarks/)


def convolve(x, k, mode: Mode = "full", *, method: Method = "auto"):
    """Convolve 1-D or 2-D `x` with kernel `k` (the kernel is flipped), like scipy.signal.convolve.

    Parameters
    ----------
    x, k : array_like or torch.Tensor
        Input and kernel with the same number of dimensions (1 or 2); a 1-D kernel with a 2-D
        input is used as a single row.
    mode : {"full", "same", "valid"}
        Output size per axis: ``N + K - 1``, ``N`` or ``|N - K| + 1``.
    method : {"auto", "direct", "fft"}
        "auto" picks FFT for float inputs with large kernels, direct otherwise.

    Returns
    -------
    The convolution, a NumPy array (or a torch tensor when `x` is one); see the module
    docstring for dtypes.

    Examples
    --------
    >>> convolve([1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1], mode="valid")
    array([ 8,  6, -1,  5, 19])
    """
    xt, kt, back = _prepare(x, k)
    return back(_convolve_t(xt, kt, _check_mode(mode), method))


def correlate(x, k, mode: Mode = "full", *, method: Method = "auto"):
    """Cross-correlate `x` with `k` (the kernel is not flipped), like scipy.signal.correlate.

    Same arguments, shapes and dtypes as `convolve`; equal to ``convolve(x, k[::-1, ::-1])``.

    Examples
    --------
    >>> correlate([1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1], mode="valid")
    array([ 7,  9, 10, -2, -1])
    """
    xt, kt, back = _prepare(x, k)
    return back(_convolve_t(xt, kt.flip(tuple(range(kt.ndim))), _check_mode(mode), method))


def convolve2d(
    x,
    k,
    mode: Mode = "full",
    *,
    boundary: Boundary = "fill",
    fillvalue: float = 0.0,
    method: Method = "auto",
):
    """2-D convolution with a border rule, like scipy.signal.convolve2d.

    `boundary` says what lies outside the image for "full" and "same" ("valid" never looks
    outside): "fill" (the constant `fillvalue`), "reflect" (half-sample symmetric,
    ``d c b a | a b c d | d c b a``, the edge pixel repeated: scipy.signal's "symm",
    scipy.ndimage's "reflect", numpy.pad's "symmetric"; "symm" is accepted as an alias) or
    "wrap" (periodic). Unlike `convolve`, the kernel may not be larger than the image in
    "valid" mode (an image filter never swaps its operands).

    Examples
    --------
    >>> img = np.arange(25).reshape(5, 5)
    >>> convolve2d(img, np.ones((3, 3)), mode="same", boundary="reflect")[0, 0]
    np.float64(18.0)
    """
    xt, kt, back = _prepare(x, k, ndims=(2,))
    mode = _check_mode(mode)
    if boundary == "symm":
        boundary = "reflect"
    if boundary not in BOUNDARIES:
        raise CnnlabError(f"unknown boundary {boundary!r}: use one of {', '.join(BOUNDARIES)}")
    kh, kw = kt.shape
    if mode == "valid":
        if kh > xt.shape[0] or kw > xt.shape[1]:
            raise CnnlabError(
                f"kernel {kh}x{kw} is larger than the image {xt.shape[0]}x{xt.shape[1]} "
                "in 'valid' mode"
            )
        return back(_valid_convolve(xt, kt, method))
    if mode == "full":
        pads = ((kh - 1, kh - 1), (kw - 1, kw - 1))
    else:
        pads = ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
    return back(_valid_convolve(_pad(xt, pads, boundary, fillvalue), kt, method))


# -- plumbing: inputs to tensors and back ------------------------------------------------------


def _prepare(x, k, ndims: tuple[int, ...] = (1, 2)):
    """Both operands as tensors of one compute dtype, and a function giving the result back."""
    as_torch = isinstance(x, torch.Tensor)
    xt, kt = _to_tensor(x, "input"), _to_tensor(k, "kernel")
    if kt.ndim > xt.ndim:
        raise CnnlabError(f"kernel has {kt.ndim} dimensions, more than the input's {xt.ndim}")
    if xt.ndim not in ndims:
        raise CnnlabError(
            f"input must have {' or '.join(map(str, ndims))} dimensions, got {xt.ndim}"
        )
    while kt.ndim < xt.ndim:
        kt = kt.unsqueeze(0)
    integral = not (xt.is_floating_point() or kt.is_floating_point())
    if integral:
        out_dtype = compute = torch.int64
    else:
        out_dtype = torch.promote_types(xt.dtype, kt.dtype)
        compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    np_dtype = None
    if not as_torch:
        np_dtype = np.dtype(np.int64) if integral else np.result_type(np.asarray(x), np.asarray(k))
    xt, kt = xt.to(compute), kt.to(compute)

    def back(out: torch.Tensor):
        if as_torch:
            return out.to(out_dtype)
        return out.detach().cpu().numpy().astype(np_dtype, copy=False)

    return xt, kt, back


def _to_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a
    else:
        arr = np.asarray(a)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise CnnlabError(f"{what} is not numeric (dtype {arr.dtype})")
        if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
            arr = arr.astype(np.int64)  # torch has no uint16/32/64 arithmetic
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise CnnlabError(f"{what} is complex; only real inputs are supported")
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if t.ndim == 0:
        raise CnnlabError(f"{what} is a scalar, expected a 1-D or 2-D array")
    if t.numel() == 0:
        raise CnnlabError(f"{what} is empty (shape {tuple(t.shape)})")
    return t


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise CnnlabError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


# -- the computation ---------------------------------------------------------------------------


def _convolve_t(x: torch.Tensor, k: torch.Tensor, mode: Mode, method: Method) -> torch.Tensor:
    """scipy.signal.convolve on tensors of the same ndim and compute dtype."""
    xs, ks = tuple(x.shape), tuple(k.shape)
    if mode == "valid":
        if all(a >= b for a, b in zip(xs, ks, strict=True)):
            return _valid_convolve(x, k, method)
        if all(b >= a for a, b in zip(xs, ks, strict=True)):
            return _valid_convolve(k, x, method)  # convolution commutes; scipy swaps too
        raise CnnlabError(
            f"in 'valid' mode one input must be at least as large as the other in every "
            f"dimension (input {xs}, kernel {ks})"
        )
    if mode == "full":
        if k.numel() > x.numel():
            x, k = k, x  # fewer shifted passes, same result
        return _valid_convolve(_pad(x, [(n - 1, n - 1) for n in k.shape]), k, method)
    # same: the slice of "full" starting at (K - 1) // 2, i.e. pad K // 2 before, (K - 1) // 2 after
    if k.numel() > x.numel():
        full = _convolve_t(x, k, "full", method)
        return full[
            tuple(slice((n - 1) // 2, (n - 1) // 2 + m) for n, m in zip(ks, xs, strict=True))
        ]
    return _valid_convolve(_pad(x, [(n // 2, (n - 1) // 2) for n in ks]), k, method)


def _valid_convolve(xp: torch.Tensor, k: torch.Tensor, method: Method) -> torch.Tensor:
    """The "valid" convolution of `xp` (already padded) with `k`, by the direct or FFT path."""
    if method not in ("auto", "direct", "fft"):
        raise CnnlabError(f"unknown method {method!r}: use auto, direct or fft")
    use_fft = method == "fft" or (method == "auto" and _use_fft(xp, k))
    if use_fft and xp.is_floating_point():
        return _valid_convolve_fft(xp, k)
    return _valid_correlate_direct(xp, k.flip(tuple(range(k.ndim))))


def _use_fft(xp: torch.Tensor, k: torch.Tensor) -> bool:
    """FFT when it is cheaper: K weights per output pixel (direct) vs ~log2(size) (FFT).

    Measured on 2048x2048 float32, 2 cores (benchmarks/bench_filters.py, rerun in the
    README): direct 0.020 s at 5x5, 0.054 s at 11x11, 0.077 s at 13x13; FFT about 0.07 s
    for any kernel, so FFT wins from about 13x13 (169 weights ~ 6 x log2(4.2M pixels)).
    Integer inputs stay direct (exact); non-finite inputs stay direct (an FFT would
    spread a NaN over the whole output).
    """
    if not xp.is_floating_point() or k.numel() < FFT_MIN_KERNEL:
        return False
    size = math.prod(a + b - 1 for a, b in zip(xp.shape, k.shape, strict=True))
    if k.numel() <= FFT_WEIGHTS_PER_LOG2 * math.log2(max(size, 2)):
        return False
    return bool(torch.isfinite(xp).all() and torch.isfinite(k).all())


STRIP_ELEMENTS = 524_288  # output elements per strip (2 MiB float32): see _valid_correlate_direct


def _valid_correlate_direct(xp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_m w[m] * xp[n + m]: one multiply-add over the input per kernel weight.

    The output is cut into strips of about 512k elements (2 MiB of float32); each op is
    above torch's parallel grain, so both cores share it, and the strip stays in cache
    while every weight is added in. Measured on 2048x2048 float32, 2 cores, idle machine:
    3x3 in 0.011-0.030 s and 5x5 in 0.017-0.022 s with 512k-element strips, vs 0.027 s
    and 0.058 s with 32k-element strips (single-threaded ops) and 0.022 s and 0.045 s for
    whole-image passes.
    """
    out_shape = [a - b + 1 for a, b in zip(xp.shape, w.shape, strict=True)]
    out = torch.empty(out_shape, dtype=xp.dtype, device=xp.device)
    weights = w.detach().cpu().numpy()
    taps = [(m, weights[m].item()) for m in np.ndindex(*w.shape)]  # zeros too: 0 * NaN = NaN
    row = math.prod(out_shape[1:])
    strip = max(1, STRIP_ELEMENTS // max(row, 1))

    def fill(r0: int) -> None:
        r1 = min(r0 + strip, out_shape[0])
        o = out[r0:r1]
        for t, (m, weight) in enumerate(taps):
            rest = (slice(i, i + n) for i, n in zip(m[1:], out_shape[1:], strict=True))
            window = xp[(slice(r0 + m[0], r1 + m[0]), *rest)]
            if t == 0:
                torch.mul(window, weight, out=o)
            else:
                o.add_(window, alpha=weight)

    starts = range(0, out_shape[0], strip)
    if xp.requires_grad:  # keep autograd: whole-tensor out-of-place sums
        total = sum(
            v * xp[tuple(slice(i, i + n) for i, n in zip(m, out_shape, strict=True))]
            for m, v in taps
        )
        return total
    for r0 in starts:
        fill(r0)
    return out


def _valid_convolve_fft(xp: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The valid part of irfft(rfft(xp) * rfft(k)), transforms padded to fast lengths."""
    from scipy.fft import next_fast_len

    full = [a + b - 1 for a, b in zip(xp.shape, k.shape, strict=True)]
    fshape = [next_fast_len(n, real=True) for n in full]
    dims = tuple(range(xp.ndim))
    spec = torch.fft.rfftn(xp, s=fshape, dim=dims) * torch.fft.rfftn(k, s=fshape, dim=dims)
    y = torch.fft.irfftn(spec, s=fshape, dim=dims)
    return y[tuple(slice(b - 1, a) for a, b in zip(xp.shape, k.shape, strict=True))].contiguous()


def _pad(x: torch.Tensor, pads, boundary: str = "fill", fillvalue: float = 0.0) -> torch.Tensor:
    """Pad every axis by (before, after) with zeros/`fillvalue`, a mirror or a wrap-around."""
    if all(p == (0, 0) for p in pads):
        return x
    if boundary == "fill":
        flat = [
            p for before_after in reversed(pads) for p in before_after
        ]  # F.pad: last axis first
        return F.pad(x, flat, mode="constant", value=fillvalue)
    np_mode = {"reflect": "symmetric", "wrap": "wrap"}[boundary]
    return torch.from_numpy(np.pad(x.detach().cpu().numpy(), pads, mode=np_mode))
