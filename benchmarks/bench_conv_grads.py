"""A ResNet training step with its 3x3 convolutions' gradients by Winograd vs by ATen.

The residual CNNs' bias-free 3x3 convolutions (each followed by a BatchNorm) keep ATen's
forward; `winograd.grads_on_cpu` gives them the Winograd kernel's input and weight gradients
(cnnlab.models.winograd.WinogradGradConv2d). This builds the model as a training run does
(glibc's malloc keeping freed memory, channels_last, the fused pool pairs, the NCHW weight
gradients where they apply), copies it, swaps the copy, and times SGD steps on one random
batch, alternating blocks of steps between the two so the machine's noise hits both: medians
per step and their ratio.

    .venv/bin/python benchmarks/bench_conv_grads.py                        # --preset fast's net
    .venv/bin/python benchmarks/bench_conv_grads.py --model resnet-digits --width l
    .venv/bin/python benchmarks/bench_conv_grads.py --model resnet-neu-pool --width l \\
        --size 128 --classes 6 --batch 32 --rounds 6
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from cnnlab.models import create_model, nchw_wgrad, winograd
from cnnlab.models.pool_relu import fuse_on_cpu
from cnnlab.runtime import keep_freed_memory


def build(name: str, width: str, size: int, classes: int) -> torch.nn.Module:
    """The model as `cnnlab train` places it on a CPU, before the Winograd gradients."""
    torch.manual_seed(0)
    model = create_model(
        name, in_channels=1, num_classes=classes, image_size=(size, size), width=width
    ).to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    fuse_on_cpu(model, cpu)
    nchw_wgrad.use_on_cpu(model, cpu, None, (1, size, size))
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet-tiny-pool")
    p.add_argument("--width", default="s")
    p.add_argument("--size", type=int, default=28, help="square image side (default 28)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=12, help="blocks of steps per variant")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    keep_freed_memory()  # as a training run does (cnnlab.runtime.setup)

    aten = build(args.model, args.width, args.size, args.classes)
    wino = copy.deepcopy(aten)
    how = winograd.grads_on_cpu(wino, torch.device("cpu"), None)
    if how is None or how.startswith("off"):
        print(f"bench_conv_grads: nothing to compare: Winograd gradients {how}", file=sys.stderr)
        raise SystemExit(2)
    models = {"aten": aten, "winograd": wino}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.randn(args.batch, 1, args.size, args.size).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, args.classes, (args.batch,))

    def step(k: str) -> None:
        loss = F.cross_entropy(models[k](x), y, label_smoothing=0.1)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    for k in models:  # warm-up: the kernel's build, oneDNN's primitive caches
        for _ in range(3):
            step(k)
    t = time.perf_counter()
    step("aten")
    per_block = max(1, int(0.4 / (time.perf_counter() - t)))  # about 0.4 s a block
    ms: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for k in models:
            t = time.perf_counter()
            for _ in range(per_block):
                step(k)
            ms[k].append((time.perf_counter() - t) / per_block * 1e3)
    med = {k: statistics.median(v) for k, v in ms.items()}
    result = {
        "model": args.model,
        "width": args.width,
        "input": [args.batch, 1, args.size, args.size],
        "threads": torch.get_num_threads(),
        "winograd": how,
        "steps_per_block": per_block,
        "step_ms_median": med,
        "aten_over_winograd": med["aten"] / med["winograd"],
        "step_ms_blocks": ms,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model} width {args.width}, batch {args.batch}x1x{args.size}x{args.size}: {how}")
    print(
        f"step ms (median of {args.rounds} blocks of {per_block}): ATen {med['aten']:.2f}, "
        f"Winograd gradients {med['winograd']:.2f}: {result['aten_over_winograd']:.3f}x"
    )


if __name__ == "__main__":
    main()
