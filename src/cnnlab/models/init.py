"""Keras-style initialisation, so that results compare with the lecture's Keras code.

Keras Dense and Conv2D default to Glorot-uniform kernels and zero biases; PyTorch defaults
to Kaiming-uniform(a=sqrt(5)) with non-zero biases. Glorot uniform draws from U(-l, l),
l = sqrt(6 / (fan_in + fan_out)), fan = channels x kernel area, which is exactly
`nn.init.xavier_uniform_` for both layouts.
"""

from __future__ import annotations

from torch import nn


def keras_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every Conv2d / Linear in `module` like Keras (in place); returns it."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
