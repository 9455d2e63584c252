"""Training throughput of one lever at a time, variants interleaved in one process.

Each variant is cnnlab's training epoch (`train_one_epoch`, Adam, batch 50) with one thing
changed: `aten-pool` (ATen's max-pool and ReLU instead of cnnlab's fused kernel,
cnnlab.models.pool_relu), `aten-conv` (the fused pairs, but the first block's 1-channel
convolution in ATen rather than fused with its pool and ReLU), `aten-wino` (the later
blocks' convolutions, and the ResNets' 3x3 convolution gradients, in ATen instead of
cnnlab's Winograd kernel, cnnlab.models.winograd, where that applies), `nhwc-wgrad` (oneDNN's
weight gradients on the channels_last tensors instead of cnnlab's NCHW copies,
cnnlab.models.nchw_wgrad; the same model on CPUs where that lever does not apply), `nchw`
(contiguous NCHW instead of channels_last), `relu-first`
(the notes' conv -> ReLU -> pool order instead of cnnlab's pool -> ReLU, the same
function), `fp32` (no bf16 autocast) and `bf16` (bf16 autocast); one of the last two is
`cnnlab` itself, which trains in bf16 only where a bf16 convolution measured faster
(`cnnlab.precision`), and, when asked for, `stem-fp32` (the first block, 1 input channel,
outside the autocast), `1-thread` (one CPU thread instead of one per core) and `compile`
(the model under torch.compile; its compile time is printed). The variants alternate epoch
by epoch on the same random uint8 images, so machine noise hits all alike; the median
images/s of each and its ratio to cnnlab's default are printed. This decided
channels_last, the pool-before-ReLU order and the fused pool (README, "Benchmark").

    .venv/bin/python benchmarks/bench_levers.py                          # seed-mnist, 2000 images
    .venv/bin/python benchmarks/bench_levers.py --model seed-neu --images 200 --rounds 3
    .venv/bin/python benchmarks/bench_levers.py --variants cnnlab fp32 bf16
    .venv/bin/python benchmarks/bench_levers.py --variants cnnlab compile
    .venv/bin/python benchmarks/bench_levers.py --variants cnnlab stem-fp32 1-thread
    .venv/bin/python benchmarks/bench_levers.py --model seed-neu --images 400 \
        --variants cnnlab aten-pool
    .venv/bin/python benchmarks/bench_levers.py --model seed-neu --images 50 --rounds 40 \
        --variants cnnlab aten-conv
    .venv/bin/python benchmarks/bench_levers.py --model seed-neu --images 50 --rounds 60 \
        --variants cnnlab nhwc-wgrad                                 # single steps alternating
    .venv/bin/python benchmarks/bench_levers.py --images 6000 --rounds 5 \
        --variants cnnlab aten-wino
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cnnlab.models import create_model, model_info, nchw_wgrad, winograd
from cnnlab.models.pool_relu import fuse_on_cpu
from cnnlab.runtime import setup
from cnnlab.train.engine import train_one_epoch
from cnnlab.train.run import ADAM_EPS  # the notes' (Keras) Adam epsilon

VARIANTS = (
    "cnnlab",
    "aten-pool",
    "aten-conv",
    "aten-wino",
    "nhwc-wgrad",
    "nchw",
    "relu-first",
    "fp32",
    "bf16",
    "stem-fp32",
    "1-thread",
    "compile",
)
PRECISION = {"fp32": False, "bf16": True}  # forced; the others take cnnlab's measured default


def relu_first(model: nn.Module) -> nn.Module:
    """The notes' order in every block that ends in MaxPool2d, ReLU: ReLU, then the pool."""
    for block in model.modules():
        if (
            isinstance(block, nn.Sequential)
            and len(block) >= 2
            and isinstance(block[-2], nn.MaxPool2d)
            and isinstance(block[-1], nn.ReLU)
        ):
            i, j = str(len(block) - 2), str(len(block) - 1)
            block._modules[i], block._modules[j] = block._modules[j], block._modules[i]
    return model


class Fp32Block(nn.Module):
    """`block` run outside the autocast, in float32 (for the 1-channel stem, where bf16 buys
    no matmul speed)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.block(x.float())


def build(variant: str, name: str) -> tuple:
    """(runtime, model, optimizer, generator) for one variant."""
    # bf16: None = cnnlab's default (autocast where a bf16 convolution measured faster)
    rt = setup("cpu", channels_last=variant != "nchw", bf16=PRECISION.get(variant))
    torch.manual_seed(0)
    model = create_model(name)
    if variant == "relu-first":
        relu_first(model)
    if variant == "stem-fp32":  # the seed models' first ConvBlock
        model.features[0] = Fp32Block(model.features[0])
    model = rt.place(model)
    if variant != "aten-pool":  # cnnlab's fused max-pool + ReLU kernel (models/pool_relu.py)
        # and the 1-channel conv, and the later convs by Winograd where this CPU suits it
        fuse_on_cpu(model, rt.device, conv=variant != "aten-conv", winograd=variant != "aten-wino")
    if variant != "nhwc-wgrad":  # weight gradients from NCHW copies (models/nchw_wgrad.py)
        info = model_info(name)
        nchw_wgrad.use_on_cpu(model, rt.device, rt.amp_dtype, (info.in_channels, *info.image_size))
    if variant != "aten-wino":  # the ResNets' 3x3 conv gradients by Winograd, as training does
        winograd.grads_on_cpu(model, rt.device, rt.amp_dtype)
    if variant == "compile":  # compiles on the first step (the warm-up below times it)
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=ADAM_EPS, fused=True)
    return rt, model, opt, torch.Generator().manual_seed(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="seed-mnist", help="a registered model (default seed-mnist)")
    p.add_argument("--images", type=int, default=2000, help="images per timed epoch")
    p.add_argument("--rounds", type=int, default=4, help="timed epochs per variant")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS[:8]),
        choices=VARIANTS,
        help="default: cnnlab aten-pool aten-conv aten-wino nhwc-wgrad nchw relu-first fp32 "
        "(compile takes "
        "about 30 s to compile)",
    )
    args = p.parse_args(argv)

    info = model_info(args.model)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.images, info.in_channels, *info.image_size), dtype=torch.uint8)
    y = torch.randint(0, info.num_classes, (args.images,))
    state = {v: build(v, args.model) for v in args.variants}
    cores = torch.get_num_threads()
    threads = {v: 1 if v == "1-thread" else cores for v in args.variants}
    runs: dict[str, list[float]] = {v: [] for v in args.variants}
    warmup = {}
    for v in args.variants:  # warm-up: the first calls allocate, pick kernels, compile
        rt, model, opt, gen = state[v]
        torch.set_num_threads(threads[v])
        n = min(args.images, 100)
        t0 = time.perf_counter()
        train_one_epoch(
            model, x[:n], y[:n], optimizer=opt, batch_size=50, generator=gen, runtime=rt
        )
        warmup[v] = time.perf_counter() - t0
    for _ in range(args.rounds):
        for v in args.variants:
            rt, model, opt, gen = state[v]
            torch.set_num_threads(threads[v])
            out = train_one_epoch(
                model, x, y, optimizer=opt, batch_size=50, generator=gen, runtime=rt
            )
            runs[v].append(out["images_per_s"])
    torch.set_num_threads(cores)
    med = {v: statistics.median(r) for v, r in runs.items()}
    base = med.get("cnnlab")
    amp = state["cnnlab"][0].amp_dtype if "cnnlab" in state else None
    print(
        f"{args.model}, batch 50, {args.images} images x {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, cnnlab autocast: {amp or 'none (fp32)'}"
    )
    for v in args.variants:
        ratio = f"  cnnlab / this = {base / med[v]:.2f}" if base and v != "cnnlab" else ""
        print(f"{v:11}  median {med[v]:7.1f} img/s  runs {[round(r) for r in runs[v]]}{ratio}")
    if "compile" in warmup:
        print(f"compile: warm-up epoch (with compiling) {warmup['compile']:.1f} s")


if __name__ == "__main__":
    main()
