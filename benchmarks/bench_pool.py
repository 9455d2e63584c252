"""The seed models' max-pool + ReLU, forward and backward, four ways (issue 5's largest
non-convolution cost: about 29 % of a seed-neu training step on the Zen 5 box).

- eager: `relu(max_pool2d(x, 2))`, ATen's kernels (int64 indices), what the models hold;
- compiled: the same function under `torch.compile(dynamic=False)` (inductor's CPU code);
- hand: an exact 2x2 / stride-2 pool written with tensor ops on the NHWC view, saving a
  1-byte argmax code instead of int64 indices, its backward a `where` instead of a zero-fill
  and a scatter;
- fused: `cnnlab.models.pool_relu.PoolReLU`, what cnnlab trains with since 2026-12-03: the
  hand-written pool's idea as one C++ pass each way (pool_relu.cpp).

All must give the same output and gradient bit for bit (checked, with a tie), channels_last
at seed-neu's three pool shapes, batch 50, in bf16 (`--dtype`: fp32 is what cnnlab trains in
on CPUs without fast bf16); medians of `--rounds` calls.

    .venv/bin/python benchmarks/bench_pool.py --rounds 10
    .venv/bin/python benchmarks/bench_pool.py --dtype fp32 --variants eager fused
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cnnlab.models.pool_relu import PoolReLU, load_kernel
from cnnlab.runtime import setup

SHAPES = [(50, 32, 200, 200), (50, 64, 100, 100), (50, 128, 50, 50)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
VARIANTS = ("eager", "compiled", "hand", "fused")


def eager(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.max_pool2d(x, 2))


class _HandPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) for even H, W on a channels_last tensor, ties to the first
    position in scan order as ATen does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).view(b, h // 2, 2, w // 2, 2, c)
        p = [v[:, :, i, :, j] for i in (0, 1) for j in (0, 1)]
        y = torch.maximum(torch.maximum(p[0], p[1]), torch.maximum(p[2], p[3]))
        code = torch.where(
            p[0] == y, 0, torch.where(p[1] == y, 1, torch.where(p[2] == y, 2, 3))
        ).to(torch.uint8)
        ctx.save_for_backward(code, y > 0)
        ctx.shape = x.shape
        return y.clamp_min(0).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        code, positive = ctx.saved_tensors
        b, c, h, w = ctx.shape
        gn = torch.where(positive, g.permute(0, 2, 3, 1), 0)
        k = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 1, 2, 1)
        shape = (b, h // 2, 1, w // 2, 1, c)
        out = torch.where(code.view(shape) == k, gn.reshape(shape), 0)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)


def hand(x: torch.Tensor) -> torch.Tensor:
    return _HandPoolReLU.apply(x)


def median_ms(fn, x: torch.Tensor, g: torch.Tensor, rounds: int) -> float:
    times = []
    for _ in range(rounds + 2):
        xx = x.detach().requires_grad_()
        t0 = time.perf_counter()
        fn(xx).backward(g)
        times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    return 1000 * times[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="eager (the reference) is always run",
    )
    args = ap.parse_args(argv)
    setup("cpu")
    every = {
        "eager": eager,
        "compiled": torch.compile(eager, dynamic=False),
        "hand": hand,
        "fused": PoolReLU(),
    }
    fns = {k: v for k, v in every.items() if k == "eager" or k in args.variants}
    print(f"fused: {load_kernel()[1]}; {args.dtype}, {torch.get_num_threads()} threads")
    cl, dtype = torch.channels_last, DTYPES[args.dtype]
    for shape in SHAPES:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=cl)
        x[0, 0, 0, 0] = x[0, 0, 0, 1]  # a tie: the gradient goes to the first position
        out = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
        g = torch.randn(out).to(dtype).contiguous(memory_format=cl)
        grads, outs = {}, {}
        for name, fn in fns.items():
            xx = x.detach().requires_grad_()
            t0 = time.perf_counter()
            y = fn(xx)
            y.backward(g)
            first = time.perf_counter() - t0
            outs[name], grads[name] = y, xx.grad
            if name == "compiled":
                print(f"{shape}: compiled's first call (compiling) {first:.1f} s")
        for name in [k for k in fns if k != "eager"]:
            assert torch.equal(outs[name], outs["eager"]), name
            assert torch.equal(grads[name], grads["eager"]), name
        ms = {name: median_ms(fn, x, g, args.rounds) for name, fn in fns.items()}
        print(
            f"{shape}: forward + backward, median of {args.rounds}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
        )


if __name__ == "__main__":
    main()
