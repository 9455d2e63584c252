"""The lecture's two CNNs ("seed" models), layer for layer as in its Keras code.

Keras code (notes, MNIST)::

    Conv2D(32, (3,3), relu, padding SAME) -> MaxPool2D(2) ->
    Conv2D(64, (3,3), relu, padding SAME) -> MaxPool2D(2) ->
    Flatten -> Dense(128, relu) -> Dense(10, softmax)          on 28x28x1

NEU adds a third block of 128 filters and ends in Dense(6), on 200x200x1.

Differences from Keras, none of which matters when training from scratch:

- The softmax is left out of the module: it returns logits, and the loss is
  `cross_entropy(logits)`, which is Keras' `softmax + sparse_categorical_crossentropy`
  computed stably. `predict` applies the softmax.
- Keras' Flatten runs over NHWC, PyTorch's over NCHW, so the first Dense layer sees the same
  numbers in another order: its weight rows are a permutation of Keras'. Copying Keras
  weights in would need that permutation; training from scratch does not.
- MaxPool2D on odd sizes floors in both (Keras padding "valid"), so 25 -> 12 as in Keras.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.init import keras_init_
from cnnlab.models.registry import register_model

NOTES_RECIPE_MNIST = {"optimizer": "adam", "lr": 1e-3, "batch_size": 50, "epochs": 3}
NOTES_RECIPE_NEU = {"optimizer": "adam", "lr": 1e-3, "batch_size": 50, "epochs": 10}


class ConvBlock(nn.Sequential):
    """Conv 3x3 'same' + ReLU + MaxPool 2: the notes' convolutional layer block.

    The ReLU runs after the pooling: relu(maxpool(x)) == maxpool(relu(x)) because ReLU never
    reorders values, and the gradients agree too, but the ReLU and its backward then touch a
    quarter of the numbers (seed-mnist trains about 1.4x faster on this CPU, README).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),  # padding 1 = Keras 'same' for 3x3
            nn.MaxPool2d(2),  # floors odd sizes like Keras' 'valid' pooling
            nn.ReLU(inplace=True),  # Keras' Conv2D(activation="relu"), moved after the pool
        )


class SeedCNN(nn.Module):
    """Stacked ConvBlocks, Flatten, Dense(hidden) + ReLU, Dense(num_classes) -> logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        filters: tuple[int, ...],
        hidden: int = 128,
    ) -> None:
        super().__init__()
        blocks, c = [], in_channels
        h, w = image_size
        for f in filters:
            blocks.append(ConvBlock(c, f))
            c, h, w = f, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"image_size {image_size} too small for {len(filters)} poolings")
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()  # NCHW order; Keras flattens NHWC (see module docstring)
        self.fc1 = nn.Linear(c * h * w, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # seed-mnist: (B, 64, 7, 7); seed-neu: (B, 128, 25, 25)
        x = self.flatten(x)  # seed-mnist: (B, 3136)
        x = torch.relu(self.fc1(x))  # (B, 128)
        return self.fc2(x)  # (B, num_classes) logits


@register_model(
    "seed-mnist", in_channels=1, num_classes=10, image_size=(28, 28), recipe=NOTES_RECIPE_MNIST
)
def seed_mnist(
    in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)
) -> SeedCNN:
    """The notes' MNIST CNN: conv32-pool-conv64-pool-dense128-dense10, 28x28x1."""
    # (B, 1, 28, 28) -> block1 (B, 32, 14, 14) -> block2 (B, 64, 7, 7) -> (B, 3136)
    # -> (B, 128) -> (B, 10)
    return SeedCNN(in_channels, num_classes, image_size, filters=(32, 64))


@register_model(
    "seed-neu", in_channels=1, num_classes=6, image_size=(200, 200), recipe=NOTES_RECIPE_NEU
)
def seed_neu(
    in_channels: int = 1, num_classes: int = 6, image_size: tuple[int, int] = (200, 200)
) -> SeedCNN:
    """The notes' NEU CNN: conv32/64/128 blocks, dense128, dense6, 200x200x1."""
    # (B, 1, 200, 200) -> (B, 32, 100, 100) -> (B, 64, 50, 50) -> (B, 128, 25, 25)
    # -> (B, 80000) -> (B, 128) -> (B, 6)
    return SeedCNN(in_channels, num_classes, image_size, filters=(32, 64, 128))
