"""The training engine: one epoch of training and one evaluation pass, as plain functions.

Data flow: the whole split sits in memory (on the device) as uint8 (N, C, H, W); each step
slices a batch with a per-epoch permutation from a seeded `torch.Generator`, converts it to
float with `.float().mul_(1/255)` (the notes' `x / 255`), and runs the model. Training drops
the last incomplete batch (constant shapes, as the fast kernels and torch.compile like);
evaluation runs it at its own size so every image counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.augment import AugmentSpec, augment, symmetric_views, tta_symmetry
from cnnlab.progress import progress_bar
from cnnlab.runtime import Runtime

PIXEL_SCALE = 1.0 / 255.0  # uint8 pixels -> [0, 1], the notes' `train_x / 255.0`
EVAL_BATCH = 500  # images per evaluation step: large enough to keep the cores busy


def to_input(
    batch_u8: torch.Tensor,
    runtime: Runtime | None = None,
    *,
    aug: AugmentSpec | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1] (augmented when `aug` is given), channels_last
    when the runtime asks for it."""
    x = batch_u8.float().mul_(PIXEL_SCALE)
    if aug is not None and generator is not None:
        x = augment(x, aug, generator)
    if runtime is not None and runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    runtime: Runtime,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    aug: AugmentSpec | None = None,
    aug_generator: torch.Generator | None = None,
    lr_at: Callable[[int], float] | None = None,
    step_offset: int = 0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    progress: bool = False,
    desc: str = "train",
    shard: tuple[int, int] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One pass over the images in a seeded random order; returns loss, accuracy, images/s.

    The last incomplete batch is dropped (every step sees `batch_size` images); with fewer
    images than `batch_size` the one batch is the whole set. Loss is the mean cross-entropy
    of the batches (class-weighted when `class_weights` is given), as Keras reports it.
    Options of the better recipes: `aug` (batched augmentation drawn from `aug_generator`),
    `lr_at(global_step)` setting the learning rate before each step (`step_offset` = steps
    of earlier epochs), `label_smoothing`, and `ema`, updated after every step.
    `shard=(rank, world)` (data-parallel, `model` DDP-wrapped): this process trains on
    images rank, rank+world, ... of each global batch (augmented as the whole batch would
    be, so the world's steps equal one process's); the returned metrics are all ranks'.
    `stop()`, asked before every step but the first, ends the pass early when True (a clock
    budget); the returned figures then cover the steps that ran.
    """
    model.train()
    rank, world = shard or (0, 1)
    n = images_u8.shape[0]
    bs = min(batch_size, n)
    steps = n // bs
    perm = torch.randperm(n, generator=generator).to(images_u8.device)
    loss_sum = torch.zeros((), device=images_u8.device)
    correct = torch.zeros((), dtype=torch.int64, device=images_u8.device)
    t0 = time.perf_counter()
    done = 0
    with progress_bar(
        desc=desc, enabled=progress, total=steps * bs, unit_scale=True, leave=True
    ) as bar:
        for step in range(steps):
            if step > 0 and stop is not None and stop():
                break
            batch = perm[step * bs : (step + 1) * bs]
            idx = batch[rank::world]  # this process's share (all of it in one process)
            if world > 1 and aug is not None:  # the whole batch's random draws, then the share
                x = to_input(images_u8[batch], runtime, aug=aug, generator=aug_generator)
                x = x[rank::world]
            else:
                x = to_input(images_u8[idx], runtime, aug=aug, generator=aug_generator)
            y = labels[idx]
            if lr_at is not None:
                lr = lr_at(step_offset + step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            with runtime.autocast():
                logits = model(x)
            if world == 1:
                loss = part = F.cross_entropy(
                    logits.float(), y, weight=class_weights, label_smoothing=label_smoothing
                )
            else:
                # this share's part of the global batch's mean loss; DDP averages gradients
                # over the ranks, so `world * part` gives the one-process batch gradient
                total = bs if class_weights is None else class_weights[labels[batch]].sum()
                part = (
                    F.cross_entropy(
                        logits.float(),
                        y,
                        weight=class_weights,
                        label_smoothing=label_smoothing,
                        reduction="sum",
                    )
                    / total
                )
                loss = part * world
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += part.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            done += 1
            bar.update(bs)
            if not bar.disable and (step % 20 == 0 or step == steps - 1):
                seen = (step + 1) * bs  # this rank's figures scaled up: display only
                bar.set_postfix(
                    loss=f"{loss_sum.item() * world / (step + 1):.4f}",
                    acc=f"{correct.item() * world / seen:.4f}",
                    img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                )
    if world > 1:  # every rank's share -> the global batch figures
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(correct)
    seconds = time.perf_counter() - t0
    seen = done * bs
    return {
        "loss": loss_sum.item() / max(done, 1),
        "accuracy": correct.item() / max(seen, 1),
        "n": seen,
        "steps": done,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else 0.0,
    }


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_u8: torch.Tensor,
    *,
    runtime: Runtime,
    batch_size: int = EVAL_BATCH,
    tta: bool | str | None = False,
) -> torch.Tensor:
    """Logits (N, num_classes), float32 on the CPU, for uint8 images (any device).

    `tta`: test-time augmentation, the mean of the log-softmax over the symmetries the model
    was trained with: "flips" (the 4 mirrors) or "dihedral" / True (the 8 flips / 90-degree
    rotations; 4 for non-square images). A model JSON's "tta" entry can be passed as it is.
    """
    model.eval()
    symmetry = tta_symmetry(tta)
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = to_input(images_u8[start : start + batch_size].to(runtime.device), runtime)
        with runtime.autocast():
            out.append(tta_logits(lambda v: model(v).float(), x, symmetry).cpu())
    if not out:
        return torch.zeros((0, 0))
    return torch.cat(out)


def tta_logits(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, symmetry: str | None
) -> torch.Tensor:
    """run(x), or with a `symmetry` ("flips" / "dihedral", see `tta_symmetry`) the mean
    log-softmax of run over x's symmetric views: the one test-time augmentation of every
    backend."""
    if symmetry is None:
        return run(x)
    views = symmetric_views(x, symmetry)
    return torch.stack([F.log_softmax(run(v), 1) for v in views]).mean(0)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    runtime: Runtime,
    batch_size: int = EVAL_BATCH,
    class_weights: torch.Tensor | None = None,
    tta: bool | str | None = False,
) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and predictions over every image (last batch at its size).

    Returns a dict with loss, accuracy, n, seconds, images_per_s, and `logits` (N, K) on the
    CPU for callers that want probabilities or a confusion matrix.
    """
    t0 = time.perf_counter()
    logits = predict_logits(model, images_u8, runtime=runtime, batch_size=batch_size, tta=tta)
    y = labels.cpu()
    n = int(y.shape[0])
    seconds = time.perf_counter() - t0
    if n == 0:
        return {
            "loss": float("nan"),
            "accuracy": float("nan"),
            "n": 0,
            "seconds": seconds,
            "images_per_s": 0.0,
            "logits": logits,
        }
    w = None if class_weights is None else class_weights.cpu()
    return {
        "loss": F.cross_entropy(logits, y, weight=w).item(),
        "accuracy": (logits.argmax(1) == y).double().mean().item(),
        "n": n,
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
        "logits": logits,
    }
