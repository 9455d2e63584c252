"""One block, forward + backward: cnnlab's Winograd kernel vs ATen's convolution + fused pool.

The seed models' blocks after the first (conv 3x3 + bias, 2x2 max-pool, ReLU) at the shapes
they train at, batch 50, channels_last float32: `WinogradConvPoolReLU` (cnnlab.models.winograd)
against `Conv2d` + `PoolReLU` (what cnnlab ran before, and runs with CNNLAB_WINOGRAD=0).
Calls alternate in rounds, so the machine's noise hits both; medians per round and their ratio.

    .venv/bin/python benchmarks/bench_winograd.py                 # all three shapes
    .venv/bin/python benchmarks/bench_winograd.py --shapes mnist2 --calls 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cnnlab.models.pool_relu import PoolReLU, load_kernel
from cnnlab.models.winograd import WinogradConvPoolReLU

# name: (C_in, C_out, side) of the block's input
SHAPES = {"mnist2": (32, 64, 14), "neu2": (32, 64, 100), "neu3": (64, 128, 50)}


def step_seconds(block: nn.Module, x: torch.Tensor, g: torch.Tensor, calls: int) -> float:
    """Median seconds of `calls` forward + backward passes."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        block(x.detach().requires_grad_()).backward(g)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--calls", type=int, default=0, help="calls per round (default: by size)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    lib, how = load_kernel()
    if lib is None:
        raise SystemExit(f"the kernels are not built here: {how}")
    torch.manual_seed(0)
    cl = torch.channels_last
    for name in args.shapes:
        c_in, c_out, side = SHAPES[name]
        calls = args.calls or (200 if side < 32 else 6)
        x = torch.randn(args.batch, c_in, side, side).contiguous(memory_format=cl)
        g = torch.randn(args.batch, c_out, side // 2, side // 2).contiguous(memory_format=cl)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1).to(memory_format=cl)
        blocks = {"winograd": WinogradConvPoolReLU(conv), "aten": nn.Sequential(conv, PoolReLU())}
        for block in blocks.values():  # warm-up: first calls allocate and pick kernels
            step_seconds(block, x, g, 2)
        for r in range(args.rounds):
            t = {k: step_seconds(b, x, g, calls) for k, b in blocks.items()}
            print(
                f"{name} ({args.batch}x{c_in}x{side}x{side} -> {c_out}) round {r + 1}: "
                f"winograd {1e3 * t['winograd']:.2f} ms, aten conv + fused pool "
                f"{1e3 * t['aten']:.2f} ms, {t['aten'] / t['winograd']:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
