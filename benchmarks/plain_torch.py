"""The lecture's CNNs in plain PyTorch, written the way a typical user writes a training loop.

TensorDataset + DataLoader(shuffle=True, batch_size=50), default layer init, Adam(lr=1e-3),
CrossEntropyLoss on logits (= Keras' softmax + sparse categorical cross-entropy),
model.train() / zero_grad / backward / step. Nothing from cnnlab is imported: this is the
"what you get without cnnlab" contestant. Two one-line levers can be switched on:
  --channels-last   model and batches in NHWC memory format
  --bf16            torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss

Runs in the cnnlab environment (.venv); reads the same .npy files as keras_lecture.py and
prints one JSON line at the end (fit time, images/s, test accuracy, versions, threads).

Usage (normally run by bench_train.py):
    .venv/bin/python benchmarks/plain_torch.py mnist \
        train_x.npy train_y.npy test_x.npy test_y.npy --epochs 3 --batch-size 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mnist_model() -> nn.Sequential:
    """The notes' MNIST CNN: 2 x (conv3x3 'same' + ReLU + maxpool2), dense 128, dense 10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),  # (B, 32, 28, 28)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, 14, 14)
        nn.Conv2d(32, 64, kernel_size=3, padding=1),  # (B, 64, 14, 14)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, 7, 7)
        nn.Flatten(),  # (B, 3136)
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),  # logits; softmax lives in the loss
    )


def neu_model() -> nn.Sequential:
    """The notes' NEU CNN: 3 x (conv3x3 'same' + ReLU + maxpool2), dense 128, dense 6."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),  # (B, 32, 200, 200)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, 100, 100)
        nn.Conv2d(32, 64, kernel_size=3, padding=1),  # (B, 64, 100, 100)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, 50, 50)
        nn.Conv2d(64, 128, kernel_size=3, padding=1),  # (B, 128, 50, 50)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 128, 25, 25)
        nn.Flatten(),  # (B, 80000)
        nn.Linear(128 * 25 * 25, 128),
        nn.ReLU(),
        nn.Linear(128, 6),
    )


MODELS = {"mnist": mnist_model, "neu": neu_model}
EPOCHS = {"mnist": 3, "neu": 10}  # the notes' fit(..., epochs=3) and fit(..., epochs=10)


def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N,H,W) or (N,H,W,1) images and integer labels -> float (N,1,H,W) in [0,1], int64."""
    xt = torch.from_numpy(x).float() / 255.0
    xt = xt.unsqueeze(1) if xt.ndim == 3 else xt.permute(0, 3, 1, 2).contiguous()
    return xt, torch.from_numpy(y.astype(np.int64))


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate one task; print the result as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("task", choices=sorted(MODELS))
    p.add_argument("train_x")
    p.add_argument("train_y")
    p.add_argument("test_x")
    p.add_argument("test_y")
    p.add_argument("--epochs", type=int, default=None, help="default: the notes' (3 / 10)")
    p.add_argument("--batch-size", type=int, default=50, help="the notes' 50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward + loss")
    args = p.parse_args(argv)
    epochs = args.epochs or EPOCHS[args.task]
    torch.manual_seed(args.seed)

    train_x, train_y = to_tensors(np.load(args.train_x), np.load(args.train_y))
    test_x, test_y = to_tensors(np.load(args.test_x), np.load(args.test_y))
    train_loader = DataLoader(
        TensorDataset(train_x, train_y), batch_size=args.batch_size, shuffle=True
    )
    test_loader = DataLoader(TensorDataset(test_x, test_y), batch_size=args.batch_size)

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = MODELS[args.task]().to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # Keras 'adam' default lr
    loss_fn = nn.CrossEntropyLoss()

    def autocast():
        if args.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for xb, yb in train_loader:
            xb = xb.to(memory_format=memory_format)
            optimizer.zero_grad()
            with autocast():
                out = model(xb)
                loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            total += len(yb)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f} acc {correct / total:.4f}")
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for xb, yb in test_loader:
            with autocast():
                out = model(xb.to(memory_format=memory_format))
                loss_sum += loss_fn(out, yb).item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
    eval_s = time.perf_counter() - t0

    n_train, n_test = len(train_x), len(test_x)
    result = {
        "contestant": "torch"
        + ("+cl" if args.channels_last else "")
        + ("+bf16" if args.bf16 else ""),
        "task": args.task,
        "epochs": epochs,
        "batch_size": args.batch_size,
        "n_train": n_train,
        "n_test": n_test,
        "fit_s": fit_s,
        "eval_s": eval_s,
        "images_per_s": n_train * epochs / fit_s,
        "test_accuracy": correct / n_test,
        "test_loss": loss_sum / n_test,
        "flags": {"channels_last": args.channels_last, "bf16": args.bf16},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
