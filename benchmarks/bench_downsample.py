"""Strided convolutions against average-pool downsampling: why `fast` uses `resnet-tiny-pool`.

Two measurements, each interleaved round by round so machine noise hits both alike, bf16
autocast where the CPU has native bf16 (as cnnlab trains), channels_last, cnnlab's threads:

1. one downsampling block's convolutions, forward + backward (input gradient included) at
   batch 128: `resnet-tiny`'s 3x3 stride-2 conv + 1x1 stride-2 shortcut against a 2x2
   average pool followed by the same convs at stride 1;
2. cnnlab's training epoch (`train_one_epoch` with the `fast` preset's SGD, batch 128, on
   random digits) of `resnet-tiny` and `resnet-tiny-pool`, in images/s.

    .venv/bin/python benchmarks/bench_downsample.py
    .venv/bin/python benchmarks/bench_downsample.py --rounds 5 --steps 200 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import create_model
from cnnlab.runtime import setup
from cnnlab.train import TrainConfig
from cnnlab.train.engine import train_one_epoch
from cnnlab.train.run import build_optimizer

BATCH = 128


def _timed(fn: Callable[[], object], reps: int) -> float:
    """Milliseconds per call of fn, after 10 untimed calls."""
    for _ in range(10):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def block_pass(strided: bool, c_in: int, c_out: int, size: int, rt) -> Callable[[], None]:
    """Forward + backward of one downsampling block's convolutions (no BN, no ReLU)."""
    cl = torch.channels_last
    stride = 2 if strided else 1
    conv3 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False).to(memory_format=cl)
    conv1 = nn.Conv2d(c_in, c_out, 1, stride, bias=False).to(memory_format=cl)
    x = torch.randn(BATCH, c_in, size, size).contiguous(memory_format=cl).requires_grad_()

    def run() -> None:
        with rt.autocast():
            d = x if strided else F.avg_pool2d(x, 2, ceil_mode=True)
            y = conv3(d) + conv1(d)
        y.float().sum().backward()

    return run


def train_epoch(name: str, rt, steps: int) -> Callable[[], None]:
    """cnnlab's training epoch (`train_one_epoch`, the `fast` preset's optimizer and label
    smoothing) of registered model `name` over `steps` batches of random digits."""
    torch.manual_seed(0)
    model = rt.place(create_model(name))
    cfg = TrainConfig(data="mnist", preset="fast", model=name, out="unused").resolved()
    opt = build_optimizer(model, cfg)
    images = torch.randint(0, 256, (steps * BATCH, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (steps * BATCH,))

    def run() -> None:
        train_one_epoch(
            model,
            images,
            labels,
            optimizer=opt,
            batch_size=BATCH,
            generator=torch.Generator().manual_seed(0),
            runtime=rt,
            label_smoothing=cfg.label_smoothing,
        )

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--steps", type=int, default=150, help="timed calls a round (default 150)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    rt = setup()
    out: dict[str, dict[str, list[float]]] = {"block_ms": {}, "train_images_per_s": {}}
    blocks = {
        f"{c_in}->{c_out} at {s}x{s}, {kind}": block_pass(kind == "strided", c_in, c_out, s, rt)
        for c_in, c_out, s in ((16, 32, 14), (32, 64, 7))
        for kind in ("strided", "pooled")
    }
    epoch_steps = max(1, args.steps // 10)  # an epoch per call: 10 timed calls a round
    models = {
        name: train_epoch(name, rt, epoch_steps) for name in ("resnet-tiny", "resnet-tiny-pool")
    }
    for _ in range(args.rounds):
        for key, fn in blocks.items():
            out["block_ms"].setdefault(key, []).append(_timed(fn, args.steps))
        for key, fn in models.items():
            ms = _timed(fn, 10)
            out["train_images_per_s"].setdefault(key, []).append(epoch_steps * BATCH / ms * 1e3)
    summary = {
        "threads": rt.threads,
        "amp": str(rt.amp_dtype),
        "median": {
            group: {k: round(statistics.median(v), 3) for k, v in rows.items()}
            for group, rows in out.items()
        },
        "runs": out,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for group, rows in summary["median"].items():
        print(group)
        for k, v in rows.items():
            print(f"  {k:<28} {v:>10.2f}")
    tiny = summary["median"]["train_images_per_s"]
    print(f"resnet-tiny-pool / resnet-tiny: {tiny['resnet-tiny-pool'] / tiny['resnet-tiny']:.2f}x")


if __name__ == "__main__":
    main()
