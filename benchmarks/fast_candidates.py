"""Candidates for `--preset fast` (issue 5: 99.0% MNIST test within 10 s of training).

Trains one candidate for 1 epoch with the `fast` preset's recipe (SGD Nesterov one-cycle, no
augmentation, no EMA, no validation split) and prints its test accuracy and training seconds.
The candidates beside `resnet-digits` are registered here only, for this search:

- `x-str2`: `resnet-digits` width s with a stride-2 stem conv instead of conv + max-pool;
- `x-tiny`: stride-2 stem conv, then two stride-2 residual blocks (16/32/64), GAP, Linear;
- `x-tiny24`, `x-tiny32`: the same with 24/48/96 and 32/32/64 channels.

    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/fast_candidates.py x-tiny 128 0.4
    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/fast_candidates.py resnet-digits 64 0.1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from cnnlab.models.registry import register_model
from cnnlab.models.resnet import ConvBN, ResidualBlock, ResNet
from cnnlab.train import TrainConfig, train


class Tiny(nn.Module):
    """Stride-2 stem conv (28 -> 14), two stride-2 residual blocks (-> 7 -> 4), GAP, Linear."""

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        a, b, c = widths
        self.body = nn.Sequential(ConvBN(1, a, 2), ResidualBlock(a, b, 2), ResidualBlock(b, c, 2))
        self.fc = nn.Linear(c, num_classes)
        self.image_size = (28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def _register() -> None:
    def reg(name: str, make):  # width is accepted (the preset passes one) and ignored
        register_model(name, in_channels=1, num_classes=10, image_size=(28, 28))(
            lambda in_channels=1, num_classes=10, image_size=(28, 28), width="s": make()
        )

    reg("x-str2", lambda: ResNet(1, 10, (28, 28), (16, 32, 64), (1, 1, 1), 2, stem_pool=False))
    reg("x-tiny", lambda: Tiny((16, 32, 64)))
    reg("x-tiny24", lambda: Tiny((24, 48, 96)))
    reg("x-tiny32", lambda: Tiny((32, 32, 64)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="resnet-digits (width s) or x-str2 / x-tiny / x-tiny24 / x-tiny32")
    p.add_argument("batch_size", type=int)
    p.add_argument("lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _register()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data="mnist",
            preset="fast",
            model=args.model,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            width="s",
            out=str(Path(tmp) / "run"),
        )
        result = train(cfg, progress=False, log=lambda _m: None)
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    print(
        f"{args.model} batch {args.batch_size} lr {args.lr} seed {args.seed}: test "
        f"{result.test['accuracy']:.4f}, train {metrics['train_seconds']:.1f} s, "
        f"{metrics['final']['images_per_s']:.0f} img/s"
    )


if __name__ == "__main__":
    main()
