"""Models: a registry of named factories, starting with the lecture's two seed CNNs."""

from cnnlab.models import resnet as _resnet  # noqa: F401  (registers resnet-digits, resnet-neu)
from cnnlab.models import seed as _seed  # noqa: F401  (registers seed-mnist, seed-neu)
from cnnlab.models.flops import count_flops, count_parameters
from cnnlab.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    model_kwargs,
    register_model,
)

__all__ = [
    "ModelInfo",
    "count_flops",
    "count_parameters",
    "create_model",
    "describe_models",
    "list_models",
    "model_info",
    "model_kwargs",
    "register_model",
]


def describe_models() -> list[dict]:
    """One row per registered model: name, input shape (C, H, W), parameters, FLOPs/image."""
    rows = []
    for name in list_models():
        info = model_info(name)
        model = create_model(name)
        shape = (info.in_channels, *info.image_size)
        rows.append(
            {
                "name": name,
                "input_shape": list(shape),
                "num_classes": info.num_classes,
                "parameters": count_parameters(model),
                "flops": count_flops(model, shape),
                "recipe": dict(info.recipe),
                "description": info.description,
            }
        )
    return rows
