"""Filtering a 2048x2048 float32 image: cnnlab.signal.convolve vs scipy and torch, one process.

Claim checked: for 3x3, 5x5 and 15x15 kernels, cnnlab is >= 5x faster than
scipy.signal.convolve2d and no slower than scipy.ndimage.convolve, with matching results.
All timings are best-of-N wall clock in this process; "same" mode, zero border.

    .venv/bin/python benchmarks/bench_filters.py            # the claim (about a minute)
    .venv/bin/python benchmarks/bench_filters.py --size 1024 --kernels 3,7,9,11 --repeat 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.ndimage
import scipy.signal
import torch
import torch.nn.functional as F

from cnnlab.runtime import setup_threads
from cnnlab.signal import convolve
from cnnlab.signal.convolve import _use_fft


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Minimum wall time (s) over `repeat` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=2048, help="image side in pixels")
    p.add_argument("--kernels", default="3,5,15", help="comma-separated kernel sides")
    p.add_argument("--repeat", type=int, default=5, help="best-of-N for the fast methods")
    p.add_argument(
        "--slow-repeat", type=int, default=1, help="best-of-N for scipy.signal.convolve2d"
    )
    args = p.parse_args()

    threads = setup_threads()  # physical cores and denormals flushed, as the CLI runs
    rng = np.random.default_rng(0)
    x = rng.random((args.size, args.size), dtype=np.float32)
    print(f"image {args.size}x{args.size} float32, torch threads {threads}, mode same, zero border")
    header = (
        f"{'kernel':>6} {'cnnlab':>9} {'sig.conv2d':>10} {'ndi.conv':>9} {'torch.conv2d':>12}"
        f" {'x conv2d':>9} {'x ndimage':>9} {'x torch':>8} {'max|diff|':>10} path"
    )
    print(header)
    for side in (int(s) for s in args.kernels.split(",")):
        # every weight different, so a flipped kernel would not match
        k = (rng.permutation(side * side).reshape(side, side).astype(np.float32) + 1) / side**2
        t_ours, ours = best_of(lambda k=k: convolve(x, k, "same"), args.repeat)
        t_sig, ref = best_of(lambda k=k: scipy.signal.convolve2d(x, k, "same"), args.slow_repeat)
        t_ndi, ndi = best_of(lambda k=k: scipy.ndimage.convolve(x, k, mode="constant"), args.repeat)
        xt, kt = torch.from_numpy(x)[None, None], torch.from_numpy(k[::-1, ::-1].copy())[None, None]
        t_tc, _ = best_of(
            lambda xt=xt, kt=kt, p=side // 2: F.conv2d(xt, kt, padding=p), min(args.repeat, 2)
        )
        scale = float(np.abs(ref).max())
        diff = max(float(np.abs(ours - ref).max()), float(np.abs(ndi - ref).max())) / scale
        # the path cnnlab's "same" mode takes: the padded input against the kernel
        padded = torch.zeros(args.size + side - 1, args.size + side - 1)
        path = "fft" if _use_fft(padded, torch.from_numpy(k)) else "direct"
        print(
            f"{side:>3}x{side:<2} {t_ours:9.4f} {t_sig:10.4f} {t_ndi:9.4f} {t_tc:12.4f}"
            f" {t_sig / t_ours:9.1f} {t_ndi / t_ours:9.2f} {t_tc / t_ours:8.2f} {diff:10.1e} {path}"
        )
    print("times in seconds (best of N); x = speed-up of cnnlab; max|diff| relative to max|result|")


if __name__ == "__main__":
    main()
