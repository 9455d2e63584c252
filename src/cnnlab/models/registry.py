"""The model registry: named factories (timm-style `@register_model`) and `create_model`.

A checkpoint stores the name and the factory's keyword arguments, so any script rebuilds
the exact module from `create_model(name, **kwargs)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model before building it: its defaults and recipe."""

    name: str
    factory: Callable[..., nn.Module]
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]  # (H, W)
    recipe: dict[str, Any] = field(default_factory=dict)  # default training hyperparameters
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    recipe: dict[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory `f(in_channels=, num_classes=, image_size=) -> nn.Module`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(
            name,
            factory,
            in_channels,
            num_classes,
            tuple(image_size),
            dict(recipe or {}),
            doc[0] if doc else "",
        )
        return factory

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CnnlabError(f"unknown model '{name}' (known: {', '.join(list_models())})") from None


def model_kwargs(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The full factory arguments: the registry's defaults overridden by what is given.

    `extra` holds model-specific options (e.g. `width` of the ResNets); None values are dropped.
    """
    info = model_info(name)
    return {
        "in_channels": int(in_channels or info.in_channels),
        "num_classes": int(num_classes or info.num_classes),
        "image_size": [int(s) for s in (image_size or info.image_size)],
        **{k: v for k, v in extra.items() if v is not None},
    }


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; kwargs override in_channels / num_classes / image_size.

    Examples
    --------
    >>> import torch
    >>> from cnnlab.models import create_model
    >>> m = create_model("seed-mnist")
    >>> m(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    full = model_kwargs(name, **kwargs)
    full["image_size"] = tuple(full["image_size"])
    try:
        return model_info(name).factory(**full)
    except TypeError as e:  # an option this factory does not take
        raise CnnlabError(f"model '{name}': {e}") from None
