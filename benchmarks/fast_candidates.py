"""Candidates for `--preset fast` (issue 5: 99.0% MNIST test within 10 s of training).

Trains one candidate with the `fast` preset's recipe (SGD Nesterov one-cycle, no EMA, no
validation split; batch, peak lr, epochs and label smoothing as given; whole epochs unless
`--time-budget S` puts it on the clock as `fast` is) and prints its test accuracy and
training seconds (and, with `--val-split F`, the accuracy on that share of the training
digits held out, to choose a recipe without the test set). Registered models
(`resnet-tiny-pool`, `resnet-tiny`, `resnet-digits`, with `--width`) and, for this search only:

- `x-str2`: `resnet-digits` width s with a stride-2 stem conv instead of conv + max-pool;
- `x-tinyf`: `resnet-tiny` width s with a Flatten head (64 x 4 x 4 -> 10) instead of GAP.

    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/fast_candidates.py resnet-tiny-pool \\
        128 0.4 --epochs 2 --label-smoothing 0.1 --time-budget 9.5          # = `--preset fast`
    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/fast_candidates.py resnet-digits 64 0.1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.registry import register_model
from cnnlab.models.resnet import ResNet
from cnnlab.train import TrainConfig, train


class FlattenHead(nn.Module):
    """`resnet-tiny`'s body with the whole (B, 64, 4, 4) map flattened into the Linear."""

    def __init__(self) -> None:
        super().__init__()
        tiny = create_model("resnet-tiny", width="s")
        self.stem, self.stages = tiny.stem, tiny.stages
        self.fc = nn.Linear(64 * 4 * 4, 10)
        self.image_size = (28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).flatten(1))  # (B, 1024) -> (B, 10)


def _register() -> None:
    def reg(name: str, make):  # width is accepted (the preset passes one) and ignored
        register_model(name, in_channels=1, num_classes=10, image_size=(28, 28))(
            lambda in_channels=1, num_classes=10, image_size=(28, 28), width="s": make()
        )

    reg("x-str2", lambda: ResNet(1, 10, (28, 28), (16, 32, 64), (1, 1, 1), 2, stem_pool=False))
    reg("x-tinyf", FlattenHead)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="resnet-tiny / resnet-digits, or x-str2 / x-tinyf")
    p.add_argument("batch_size", type=int)
    p.add_argument("lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", default="s", help="s | m | l (registered models; default s)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="default 0")
    p.add_argument("--augment", default="none", help="none (as `fast`) | digits")
    p.add_argument("--epochs", type=int, default=1, help="default 1")
    p.add_argument(
        "--time-budget", type=float, default=0.0, help="seconds on the clock (default 0: none)"
    )
    p.add_argument(
        "--val-split",
        type=float,
        default=0.0,
        help="hold out this share of the training digits and print their accuracy too, to choose "
        "a recipe without looking at the test set (default 0)",
    )
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
            label_smoothing=args.label_smoothing,
            augment=args.augment,
            epochs=args.epochs,
            time_budget=args.time_budget,
            budget_mode="clock",
            width=args.width,
            val_split=args.val_split,  # the preset's select="last": the val split only reports
            out=str(Path(tmp) / "run"),
        )
        result = train(cfg, progress=False, log=lambda _m: None)
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    val = metrics["final"]["val_accuracy"]
    print(
        f"{args.model} {args.width} batch {args.batch_size} lr {args.lr} "
        f"ls {args.label_smoothing} augment {args.augment} epochs {args.epochs} "
        f"clock {args.time_budget:g} s "
        f"seed {args.seed}: "
        + (f"val {val:.4f}, " if val is not None else "")
        + f"test {result.test['accuracy']:.4f}, "
        f"train {metrics['train_seconds']:.1f} s, {metrics['final']['images_per_s']:.0f} img/s"
    )


if __name__ == "__main__":
    main()
