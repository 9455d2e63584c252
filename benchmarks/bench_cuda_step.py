"""Training steps on a CUDA GPU: cnnlab's eager epoch vs the same step replayed as a CUDA graph.

The lecture's CNNs are small for a data-centre GPU: a seed-mnist step at batch 50 is a few
dozen kernel launches of microseconds each, so the GPU waits on Python and the launches
(README, "On a GPU": 7.8 s for 3 epochs on an H100, about 2 ms a step). A CUDA graph records
one whole step (forward, loss, backward, fused Adam with `capturable=True`, the running
loss and accuracy sums) and replays it as one launch; each step then only copies its batch
(sliced from the uint8 split on the GPU and scaled by 1/255, as the engine does) into the
graph's input buffers. This measures whether that is worth building into the engine.

Variants alternate epoch by epoch on the same random uint8 images on the GPU (median
images/s): `eager` (cnnlab's `train_one_epoch`, float32, channels_last), `graph` (the same
step in a CUDA graph), `eager-bf16` / `graph-bf16` (bf16 autocast). Before timing, eager and
graph train the same weights on the same batches for --check-steps steps in float32 (TF32
off) and the mean losses and final weights are compared.

    python3 benchmarks/bench_cuda_step.py --model seed-mnist --images 60000
    python3 benchmarks/bench_cuda_step.py --model seed-neu --images 1150 --rounds 5
    python3 benchmarks/bench_cuda_step.py --model resnet-digits --batch 128 --images 60000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import create_model, model_kwargs
from cnnlab.runtime import setup
from cnnlab.train.engine import PIXEL_SCALE, train_one_epoch
from cnnlab.train.run import ADAM_EPS  # the notes' (Keras) Adam epsilon

VARIANTS = ("eager", "graph", "eager-bf16", "graph-bf16")


def adam(model: nn.Module, *, capturable: bool) -> torch.optim.Optimizer:
    """cnnlab's optimizer for the seed models: fused Adam, lr 1e-3, Keras' epsilon."""
    return torch.optim.Adam(
        model.parameters(), lr=1e-3, eps=ADAM_EPS, fused=True, capturable=capturable
    )


class GraphedStep:
    """One training step (forward, cross-entropy, backward, Adam, metric sums) as a CUDA graph.

    Inputs go through fixed buffers: `step(x_u8, y)` copies a uint8 batch (scaled to [0, 1],
    channels_last) and its labels in, then replays the graph. The optimizer must have been
    built with `capturable=True` (its step counter lives on the GPU). The warm-up steps that
    capture needs leave weights and optimizer state as they were. `capture=False` runs the
    same step eagerly (the gradients set anew each step, as a replay sets them), so the
    buffers, the warm-up's undo and the sums can be checked on a CPU
    (tests/test_bench_harness.py).
    """

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        x_shape: tuple[int, ...],
        *,
        amp_dtype: torch.dtype | None = None,
        capture: bool = True,
    ) -> None:
        dev = next(model.parameters()).device
        self.model, self.opt = model, opt
        self.x = torch.zeros(x_shape, device=dev).contiguous(memory_format=torch.channels_last)
        self.y = torch.zeros(x_shape[0], dtype=torch.int64, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=dev)
        self.graph = torch.cuda.CUDAGraph() if capture else None
        saved = copy.deepcopy(model.state_dict())

        def step() -> None:
            # autocast's weight cache must be off inside a graph
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None, cache_enabled=False):  # fmt: skip
                logits = model(self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            loss.backward()
            opt.step()
            self.loss_sum.add_(loss.detach())
            self.correct.add_((logits.detach().argmax(1) == self.y).sum())

        self.step = step
        side = torch.cuda.Stream() if capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(3):  # warm-up: lazy optimizer state, cuDNN's choices, allocations
                opt.zero_grad(set_to_none=True)
                step()
        if self.graph is not None:
            torch.cuda.current_stream().wait_stream(side)
            opt.zero_grad(set_to_none=True)  # the graph's backward then sets the gradients
            with torch.cuda.graph(self.graph):
                step()
        # undo the warm-up (in place: the graph holds these addresses); fresh Adam state is 0
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
            for state in opt.state.values():
                for v in state.values():
                    if torch.is_tensor(v):
                        v.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, x_u8: torch.Tensor, y: torch.Tensor) -> None:
        self.x.copy_(x_u8.float().mul_(PIXEL_SCALE))
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.opt.zero_grad(set_to_none=True)
            self.step()


def graph_epoch(
    step: GraphedStep, images: torch.Tensor, labels: torch.Tensor, batch: int, gen: torch.Generator
) -> dict:
    """One epoch of graph replays in the engine's order (a seeded permutation, last
    incomplete batch dropped); returns images/s, mean loss and accuracy."""
    n = images.shape[0]
    steps = n // batch
    perm = torch.randperm(n, generator=gen).to(images.device)
    step.loss_sum.zero_()
    step.correct.zero_()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        step(images[idx], labels[idx])
    loss, correct = step.loss_sum.item(), step.correct.item()  # waits for the GPU
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": steps * batch / seconds,
        "loss": loss / steps,
        "accuracy": correct / (steps * batch),
        "seconds": seconds,
    }


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    g, w = got.detach().double(), want.detach().double()
    return float((g - w).norm() / w.norm().clamp_min(1e-30))


def check(name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int) -> dict:
    """Eager vs graph from the same weights on the same batches, float32 with TF32 off."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        rt = setup("cuda", bf16=False)
        torch.manual_seed(0)
        start = create_model(name, **_kwargs(name, images))
        a = rt.place(copy.deepcopy(start))
        b = rt.place(copy.deepcopy(start))
        n = steps * batch
        ea = train_one_epoch(
            a, images[:n], labels[:n], optimizer=adam(a, capturable=False), batch_size=batch,
            generator=torch.Generator().manual_seed(1), runtime=rt,
        )  # fmt: skip
        g = GraphedStep(b, adam(b, capturable=True), (batch, *images.shape[1:]))
        eb = graph_epoch(g, images[:n], labels[:n], batch, torch.Generator().manual_seed(1))
        wa = torch.cat([p.flatten() for p in a.parameters()])
        wb = torch.cat([p.flatten() for p in b.parameters()])
        w0 = torch.cat([p.flatten() for p in rt.place(start).parameters()])
        return {
            "steps": steps,
            "mean_loss_eager": ea["loss"],
            "mean_loss_graph": eb["loss"],
            "accuracy_eager": ea["accuracy"],
            "accuracy_graph": eb["accuracy"],
            "update_rel_err": rel_err(wb - w0, wa - w0),
        }
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _kwargs(name: str, images: torch.Tensor) -> dict:
    kw = model_kwargs(name)
    return {"in_channels": images.shape[1], "image_size": tuple(images.shape[2:]),
            "num_classes": kw["num_classes"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="seed-mnist", help="a registered model (default seed-mnist)")
    p.add_argument("--images", type=int, default=60000, help="images per timed epoch (60000)")
    p.add_argument("--batch", type=int, default=50, help="batch size (50, the notes')")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per variant (3)")
    p.add_argument("--check-steps", type=int, default=40, help="steps of the eager/graph check")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", help="write the JSON result here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_step: needs a CUDA device")

    kw = model_kwargs(args.model)
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    shape = (args.images, kw["in_channels"], *kw["image_size"])
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, kw["num_classes"], (args.images,), generator=gen).to(dev)
    agree = check(args.model, images, labels, args.batch, args.check_steps)

    runs: dict[str, Callable[[], dict]] = {}
    for variant in args.variants:
        bf16 = variant.endswith("bf16")
        rt = setup("cuda", bf16=bf16)
        torch.manual_seed(0)
        model = rt.place(create_model(args.model, **_kwargs(args.model, images)))
        if variant.startswith("graph"):
            step = GraphedStep(
                model, adam(model, capturable=True), (args.batch, *shape[1:]),
                amp_dtype=rt.amp_dtype,
            )  # fmt: skip
            runs[variant] = lambda step=step: graph_epoch(
                step, images, labels, args.batch, torch.Generator().manual_seed(2)
            )
        else:
            opt = adam(model, capturable=False)
            runs[variant] = lambda model=model, opt=opt, rt=rt: train_one_epoch(
                model, images, labels, optimizer=opt, batch_size=args.batch,
                generator=torch.Generator().manual_seed(2), runtime=rt,
            )  # fmt: skip
    for run in runs.values():  # warm-up epoch each: cuDNN's algorithm choice, allocations
        run()
    speeds: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(args.rounds):
        for variant, run in runs.items():
            speeds[variant].append(run()["images_per_s"])

    base = statistics.median(speeds["eager"]) if "eager" in speeds else None
    result = {
        "model": args.model,
        "batch": args.batch,
        "images": args.images,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "check": agree,
        "images_per_s": {v: round(statistics.median(s), 1) for v, s in speeds.items()},
        "rounds": {v: [round(x, 1) for x in s] for v, s in speeds.items()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(
        f"{args.model}, batch {args.batch}, {args.images} images an epoch, "
        f"{result['gpu']}, torch {result['torch']}"
    )
    print(
        f"check ({agree['steps']} steps, float32, TF32 off): mean loss eager "
        f"{agree['mean_loss_eager']:.6f} graph {agree['mean_loss_graph']:.6f}, "
        f"weight updates differ by {agree['update_rel_err']:.2e} (relative norm)"
    )
    print(f"{'variant':<11} {'img/s':>10} {'step ms':>8} {'vs eager':>9}")
    for v, s in speeds.items():
        med = statistics.median(s)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"{v:<11} {med:>10.0f} {1000 * args.batch / med:>8.3f} {ratio:>9}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
