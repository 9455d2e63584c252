"""The notes' step-by-step walk of a convolution: window, kernel as applied, products, sum.

This is the plain path that documents the math: each output value is the sum of the
element-wise products of the input window under the kernel and the (flipped, for a true
convolution) kernel. The tests check that the sums equal scipy.signal.convolve / correlate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.signal.convolve import MODES


@dataclass(frozen=True)
class ConvolutionStep:
    """One output value: where it lands and how it is made."""

    position: tuple[int, ...]  # index of the output value
    window: np.ndarray  # input values under the kernel (zeros outside the input)
    kernel: np.ndarray  # the kernel as applied: flipped for convolution, as given for correlation
    products: np.ndarray  # window * kernel, element-wise
    total: float | int  # sum of the products = the output value


def explain_convolution(x, k, mode: str = "valid", flip: bool = True) -> list[ConvolutionStep]:
    """Walk a 1-D or 2-D convolution (flip=True) or cross-correlation (flip=False) step by step.

    The kernel slides left to right (then top to bottom); "full" and "same" pad the input
    with zeros exactly as `cnnlab.signal.convolve` does, so the totals equal its output.

    Examples
    --------
    >>> steps = explain_convolution([1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1])
    >>> steps[0].window.tolist(), steps[0].kernel.tolist(), steps[0].total
    ([1, 3, 2, 3], [-1, 0, 3, 1], 8)
    >>> [s.total for s in steps]
    [8, 6, -1, 5, 19]
    """
    x, k = np.asarray(x), np.asarray(k)
    for a, what in ((x, "input"), (k, "kernel")):
        if a.dtype.kind not in "biuf":
            raise CnnlabError(f"{what} is not a real numeric array (dtype {a.dtype})")
        if a.size == 0:
            raise CnnlabError(f"{what} is empty")
    if x.ndim not in (1, 2):
        raise CnnlabError(f"input must be 1-D or 2-D, got {x.ndim} dimensions")
    if k.ndim > x.ndim:
        raise CnnlabError(f"kernel has {k.ndim} dimensions, more than the input's {x.ndim}")
    k = k.reshape((1,) * (x.ndim - k.ndim) + k.shape)
    if mode not in MODES:
        raise CnnlabError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if x.dtype.kind in "bu":
        x = x.astype(np.int64)
    if k.dtype.kind in "bu":
        k = k.astype(np.int64)
    applied = np.flip(k) if flip else k
    if mode == "valid":
        if any(a < b for a, b in zip(x.shape, k.shape, strict=True)):
            raise CnnlabError(
                f"kernel {k.shape} is larger than the input {x.shape}: use mode 'full' or 'same'"
            )
        pads = [(0, 0)] * x.ndim
    elif mode == "full":
        pads = [(n - 1, n - 1) for n in k.shape]
    else:  # same: scipy's centring (the extra pixel of an even kernel goes before)
        pads = [(n // 2, (n - 1) // 2) for n in k.shape]
    xp = np.pad(x, pads)
    out_shape = [a - b + 1 for a, b in zip(xp.shape, k.shape, strict=True)]
    steps = []
    for pos in np.ndindex(*out_shape):
        window = xp[tuple(slice(p, p + n) for p, n in zip(pos, k.shape, strict=True))]
        products = window * applied
        total = products.sum()
        steps.append(ConvolutionStep(pos, window, applied, products, total.item()))
    return steps


def format_steps(steps: list[ConvolutionStep]) -> str:
    """The steps as a text table, one row per output value; matrix rows are joined by " / "."""
    header = ("step", "position", "window", "kernel", "products", "sum")
    rows = [
        (
            str(i + 1),
            ", ".join(map(str, s.position)),
            _fmt(s.window),
            _fmt(s.kernel),
            _fmt(s.products),
            _num(s.total),
        )
        for i, s in enumerate(steps)
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = [
        "  ".join(
            v.rjust(w) if c in (0, 5) else v.ljust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(a: np.ndarray) -> str:
    if a.ndim == 1:
        return "[" + " ".join(_num(v) for v in a) + "]"
    return "[" + " / ".join(" ".join(_num(v) for v in row) for row in a) + "]"


def _num(v) -> str:
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
