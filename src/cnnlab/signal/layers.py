"""The CNN layer operations: conv2d (cross-correlation), pooling, ReLU.

Each operation has a fast path (torch.nn.functional) and, beside it, a plain NumPy reference
that spells out the math with explicit windows; the tests hold both to torch. Shapes are NCHW
(batched), CHW or HW; NumPy in gives NumPy out, a torch tensor gives a torch tensor.

Output size per spatial axis (floor division)::

    conv:  out = (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    pool:  out = (n + 2 * padding - k) // stride + 1        (stride defaults to k)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from cnnlab.errors import CnnlabError

IntPair = int | tuple[int, int]


def conv_output_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis: (n + 2p - d(k - 1) - 1) // s + 1."""
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv2d(
    x,
    weight,
    bias=None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
):
    """A convolutional layer's operation (cross-correlation, kernel not flipped), like F.conv2d.

    Parameters
    ----------
    x : (N, C, H, W), (C, H, W) or (H, W)
    weight : (O, C // groups, kh, kw); a (kh, kw) kernel with an (H, W) input gives (H', W')
    bias : (O,) or None
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" (no padding) or "same" (output H x W; stride must be 1;
        an even total padding d(k - 1) puts the odd pixel after, as torch does)

    Returns
    -------
    (N, O, H', W'), (O, H', W') or (H', W') with
    ``H' = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1`` (and W' alike).

    Examples
    --------
    >>> x = np.arange(25.0).reshape(1, 1, 5, 5)
    >>> conv2d(x, np.ones((1, 1, 3, 3))).shape
    (1, 1, 3, 3)
    """
    xt, as_np, squeeze = _to_nchw(x)
    wt = _as_tensor(weight, "weight")
    plain_kernel = wt.ndim == 2
    if plain_kernel:
        wt = wt[None, None]
    if wt.ndim != 4:
        raise CnnlabError(f"weight must be (O, C/groups, kh, kw), got shape {tuple(wt.shape)}")
    if xt.shape[1] != wt.shape[1] * groups:
        raise CnnlabError(
            f"input has {xt.shape[1]} channels but weight expects {wt.shape[1]} x {groups} groups"
        )
    bt = None if bias is None else _as_tensor(bias, "bias")
    dtype = torch.promote_types(xt.dtype, wt.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    pad = _check_padding(padding, stride)
    out = F.conv2d(
        xt.to(dtype),
        wt.to(dtype),
        None if bt is None else bt.to(dtype),
        stride=stride,
        padding=pad,
        dilation=dilation,
        groups=groups,
    )
    if squeeze == 2 and plain_kernel:
        out = out[0, 0]
    elif squeeze:
        out = out[0]
    return out.numpy() if as_np else out


def conv2d_reference(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """conv2d on NCHW NumPy arrays written out: pad, cut windows, sum window * kernel.

    ``out[n, o, i, j] = bias[o] + sum_{c, u, v} x[n, g(o) c, i s + u d, j s + v d] w[o, c, u, v]``
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    o, cg, kh, kw = w.shape
    if padding == "same":
        # total padding d(k - 1), the odd pixel after (torch's rule)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    else:
        ph, pw = (0, 0) if padding == "valid" else _pair(padding)
        pads = ((ph, ph), (pw, pw))
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    # every (dilated) kh x kw window, subsampled by the stride:  (N, C, H', W', kh, kw)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    per_group = o // groups
    outs = [
        np.einsum(
            "nchwuv,ocuv->nohw",
            win[:, g * cg : (g + 1) * cg],
            w[g * per_group : (g + 1) * per_group],
        )
        for g in range(groups)
    ]
    out = np.concatenate(outs, axis=1)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def max_pool2d(x, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0):
    """Maximum over each kernel_size window, like F.max_pool2d (padding counts as -inf).

    Output size per axis: ``(n + 2 * padding - k) // stride + 1``; stride defaults to the kernel
    size (non-overlapping windows, the notes' MaxPool2D((2, 2))).

    Examples
    --------
    >>> max_pool2d(np.arange(16.0).reshape(4, 4), 2)
    array([[ 5.,  7.],
           [13., 15.]])
    """
    return _pool(F.max_pool2d, x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0):
    """Mean over each kernel_size window, like F.avg_pool2d (zero padding counts in the mean).

    Output size per axis: ``(n + 2 * padding - k) // stride + 1``; stride defaults to kernel_size.

    Examples
    --------
    >>> avg_pool2d(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    return _pool(F.avg_pool2d, x, kernel_size, stride, padding)


def pool2d_reference(
    x: np.ndarray,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    op: str = "max",
) -> np.ndarray:
    """Max or mean pooling on (..., H, W) NumPy arrays by explicit windows (the math, slowly)."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(kernel_size if stride is None else stride)
    (ph, pw) = _pair(padding)
    x = np.asarray(x, dtype=np.float64)
    fill = -np.inf if op == "max" else 0.0
    pads = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    xp = np.pad(x, pads, constant_values=fill)
    win = sliding_window_view(xp, (kh, kw), axis=(-2, -1))[..., ::sh, ::sw, :, :]
    return win.max(axis=(-2, -1)) if op == "max" else win.mean(axis=(-2, -1))


def global_avg_pool2d(x):
    """Mean of each whole feature map: (N, C, H, W) -> (N, C), (C, H, W) -> (C,), (H, W) -> ().

    Examples
    --------
    >>> global_avg_pool2d(np.arange(8.0).reshape(2, 2, 2))
    array([1.5, 5.5])
    """
    if isinstance(x, torch.Tensor):
        return x.mean(dim=(-2, -1))
    return np.asarray(x).mean(axis=(-2, -1))


def relu(x):
    """max(x, 0) element-wise, keeping the dtype; the non-linearity after each convolution.

    Examples
    --------
    >>> relu(np.array([-2, 0, 3]))
    array([0, 0, 3])
    """
    if isinstance(x, torch.Tensor):
        return torch.relu(x)
    x = np.asarray(x)
    return np.maximum(x, np.zeros((), dtype=x.dtype))


# -- helpers -----------------------------------------------------------------------------------


def _pool(fn, x, kernel_size, stride, padding):
    xt, as_np, squeeze = _to_nchw(x)
    if not xt.is_floating_point():
        xt = xt.to(torch.float64)
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    if 2 * ph > kh or 2 * pw > kw:
        raise CnnlabError(f"padding {padding} must be at most half the pool size {kernel_size}")
    out = fn(xt, kernel_size, stride=stride, padding=padding)
    if squeeze == 2:
        out = out[0, 0]
    elif squeeze:
        out = out[0]
    return out.numpy() if as_np else out


def _to_nchw(x) -> tuple[torch.Tensor, bool, int]:
    """Input as an NCHW tensor, whether it was NumPy, and how many leading axes were added."""
    as_np = not isinstance(x, torch.Tensor)
    xt = _as_tensor(x, "input")
    if xt.ndim not in (2, 3, 4):
        raise CnnlabError(f"input must be NCHW, CHW or HW, got shape {tuple(xt.shape)}")
    squeeze = 4 - xt.ndim
    while xt.ndim < 4:
        xt = xt.unsqueeze(0)
    return xt, as_np, squeeze


def _as_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise CnnlabError(f"{what} is not a real numeric array (dtype {arr.dtype})")
    if arr.size == 0:
        raise CnnlabError(f"{what} is empty (shape {arr.shape})")
    if arr.dtype.kind in "bu" and arr.dtype != np.uint8:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_padding(padding, stride):
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise CnnlabError(f"padding must be an int, a pair, 'same' or 'valid', not {padding!r}")
        if padding == "same" and _pair(stride) != (1, 1):
            raise CnnlabError("padding='same' needs stride 1")
    return padding


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)
