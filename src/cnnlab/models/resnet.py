"""Better CNNs than the lecture's: BatchNorm, residual blocks, global average pooling.

The same ideas as the seed models (3x3 convolutions, ReLU, pooling), plus the three things
that made CNNs train fast and generalise after 2015:

- BatchNorm after every convolution: larger learning rates, less sensitivity to init.
- Residual blocks (He et al. 2016): out = relu(x + F(x)), so depth does not hurt training.
- Global average pooling instead of Flatten + a large Dense layer: a 128-channel map becomes
  128 numbers whatever the image size, so one model accepts any input size and has far fewer
  parameters (seed-neu's Dense layer alone holds 10.2 M of its 10.3 M weights).

Shapes for `resnet-neu` on 1x128x128 input::

    stem   conv 3x3 s2 + BN, maxpool 2, ReLU   (B, 24, 32, 32)
    stage1 residual block x1                    (B, 24, 32, 32)
    stage2 residual block x1, stride 2          (B, 48, 16, 16)
    stage3 residual block x1, stride 2          (B, 96, 8, 8)
    head   global average pool + Linear         (B, num_classes)
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model


class ConvBN(nn.Sequential):
    """Conv 3x3 (no bias: BN has one) + BatchNorm, optionally + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """relu(shortcut(x) + BN(conv(relu(BN(conv(x)))))); 1x1 conv shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, stride)
        self.conv2 = ConvBN(c_out, c_out, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.conv2(self.conv1(x)))


class ResNet(nn.Module):
    """Stem (conv + optional stride / max-pool), residual stages, global average pool, Linear.

    `pool_down`: stages halve the size with a 2x2 average pool before stride-1 blocks instead
    of stride-2 convolutions (ResNet-D's shortcut idea applied to the whole block: oneDNN's
    backward of a strided convolution is 2-2.5x slower here, README). `space_to_depth`: the
    stem folds each 2x2 patch into channels (PixelUnshuffle) before a stride-1 conv, instead
    of a stride-2 conv over one channel; it needs even heights and widths.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        stem_stride: int = 1,
        stem_pool: bool = True,
        pool_down: bool = False,
        space_to_depth: bool = False,
    ) -> None:
        super().__init__()
        stem: list[nn.Module]
        if space_to_depth:  # (B, C, H, W) -> (B, 4C, H/2, W/2): every pixel kept as a channel
            stem = [nn.PixelUnshuffle(2), ConvBN(in_channels * 4, widths[0])]
        else:
            # ReLU after the pool: the same function (ReLU keeps the order of values), on a
            # quarter of the numbers
            stem = [ConvBN(in_channels, widths[0], stem_stride, act=not stem_pool)]
            if stem_pool:
                stem += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        stages, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            if n == 0:  # an empty first stage: the stem's output goes on (resnet-tiny)
                continue
            stage: list[nn.Module] = []
            stride = 1 if i == 0 else 2
            if pool_down and stride == 2:  # average-pool, then stride-1 convolutions
                stage, stride = [nn.AvgPool2d(2, ceil_mode=True)], 1
            stage += [ResidualBlock(c, w, stride=stride)]
            stage += [ResidualBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.image_size = tuple(image_size)  # recorded for checkpoints; any size works
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, widths[-1], h, w)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes) logits


WIDTHS = {"s": (16, 32, 64), "m": (24, 48, 96), "l": (32, 64, 128)}  # channels per stage


def widths(width: str) -> tuple[int, ...]:
    """The stage widths of `--width` s / m / l; another value is a ValueError naming them."""
    try:
        return WIDTHS[width]
    except KeyError:
        raise ValueError(f"width must be one of {', '.join(WIDTHS)}, got '{width}'") from None


@register_model(
    "resnet-digits",
    in_channels=1,
    num_classes=10,
    image_size=(28, 28),
    recipe={"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "epochs": 12},
)
def resnet_digits(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: tuple[int, int] = (28, 28),
    width: str = "l",
) -> ResNet:
    """Small ResNet for digits: conv stem + pool to 14x14, 3 residual stages, GAP."""
    # (B, 1, 28, 28) -> stem (B, 32, 14, 14) -> (B, 32, 14, 14) -> (B, 64, 7, 7)
    # -> (B, 128, 4, 4) -> GAP (B, 128) -> (B, 10)
    return ResNet(in_channels, num_classes, image_size, widths(width), (1, 1, 1))


@register_model(
    "resnet-tiny",
    in_channels=1,
    num_classes=10,
    image_size=(28, 28),
    recipe={"optimizer": "sgd", "lr": 0.4, "batch_size": 128, "epochs": 2},
)
def resnet_tiny(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: tuple[int, int] = (28, 28),
    width: str = "s",
) -> ResNet:
    """The fastest digit model (`--preset fast`): stride-2 stem conv, two stride-2 residual
    blocks, GAP: 3.3 MFLOP an image (resnet-digits width s: 5.3), none of it at 28 x 28."""
    # (B, 1, 28, 28) -> stem (B, 16, 14, 14) -> (B, 32, 7, 7) -> (B, 64, 4, 4)
    # -> GAP (B, 64) -> (B, 10)
    return ResNet(
        in_channels, num_classes, image_size, widths(width), (0, 1, 1), 2, stem_pool=False
    )


@register_model(
    "resnet-tiny-pool",
    in_channels=1,
    num_classes=10,
    image_size=(28, 28),
    recipe={"optimizer": "sgd", "lr": 0.4, "batch_size": 128, "epochs": 2},
)
def resnet_tiny_pool(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: tuple[int, int] = (28, 28),
    width: str = "s",
) -> ResNet:
    """`resnet-tiny` without strided convolutions (`--preset fast`'s model).

    A space-to-depth stem and average-pool downsampling: on the Zen 4 box about 1.2x its
    training images/s and more accurate per step (README, "Benchmark"). Needs even heights
    and widths."""
    # (B, 1, 28, 28) -> unshuffle (B, 4, 14, 14) -> stem (B, 16, 14, 14) -> pool (B, 16, 7, 7)
    # -> (B, 32, 7, 7) -> pool (B, 32, 4, 4) -> (B, 64, 4, 4) -> GAP (B, 64) -> (B, 10)
    return ResNet(
        in_channels,
        num_classes,
        image_size,
        widths(width),
        (0, 1, 1),
        stem_pool=False,
        pool_down=True,
        space_to_depth=True,
    )


@register_model(
    "resnet-neu",
    in_channels=1,
    num_classes=6,
    image_size=(128, 128),
    recipe={"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "epochs": 30},
)
def resnet_neu(
    in_channels: int = 1,
    num_classes: int = 6,
    image_size: tuple[int, int] = (128, 128),
    width: str = "m",
) -> ResNet:
    """Small ResNet for surface textures: stride-2 stem + pool, 3 residual stages, GAP."""
    # (B, 1, 128, 128) -> stem (B, 24, 32, 32) -> (B, 24, 32, 32) -> (B, 48, 16, 16)
    # -> (B, 96, 8, 8) -> GAP (B, 96) -> (B, 6)
    return ResNet(in_channels, num_classes, image_size, widths(width), (1, 1, 1), stem_stride=2)


@register_model(
    "resnet-neu-pool",
    in_channels=1,
    num_classes=6,
    image_size=(128, 128),
    recipe={"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "epochs": 30},
)
def resnet_neu_pool(
    in_channels: int = 1,
    num_classes: int = 6,
    image_size: tuple[int, int] = (128, 128),
    width: str = "m",
) -> ResNet:
    """`resnet-neu` with average-pool downsampling in stages 2 and 3 (`--preset best`'s).

    The stem is `resnet-neu`'s; stages 2 and 3 pool 2x2, then run stride-1 blocks. Lower
    validation loss than `resnet-neu` for 3 of 3 seeds on NEU, about 0.85x its training time
    (README, "Accuracy")."""
    # (B, 1, 128, 128) -> stem (B, 24, 32, 32) -> (B, 24, 32, 32) -> pool (B, 24, 16, 16)
    # -> (B, 48, 16, 16) -> pool (B, 48, 8, 8) -> (B, 96, 8, 8) -> GAP (B, 96) -> (B, 6)
    return ResNet(
        in_channels,
        num_classes,
        image_size,
        widths(width),
        (1, 1, 1),
        stem_stride=2,
        pool_down=True,
    )
