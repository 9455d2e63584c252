"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

For a layer with activations A (N, K, h, w) and a class score y_c (the logit), each channel
gets the weight alpha_k = mean over positions of dy_c / dA_k, and the map is
ReLU(sum_k alpha_k A_k), upsampled bilinearly to the input size and scaled to [0, 1] per
image. The default layer is the output of the last conv block (after its activation and
pooling, as the paper's rectified conv maps), found by module type, never by attribute
name, so every registered model works. A forward hook captures A, and the gradient is taken
with `torch.autograd.grad` with respect to A only: no parameter ever gets a `.grad`.

Why not the last nn.Conv2d itself: its pre-activation output scores worse against NEU-DET's
boxes (seed-neu, seed 0, 288 held-out images: pointing game 29.5% vs 50.7% at the block
output; README, "Look inside").
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.progress import progress_bar

CAM_BATCH = 32  # images per Grad-CAM step: seed-neu keeps ~0.2 GB of activations per step

# The hook and the requires_grad flags live on the model: one Grad-CAM at a time per process.
_LOCK = threading.Lock()


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last nn.Conv2d registered in `model`."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise CnnlabError("the model has no nn.Conv2d layer; choose a layer for Grad-CAM")
    return convs[-1]


def default_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Grad-CAM's default layer: the module giving the last conv block's output for input x."""
    from cnnlab.explain.features import last_block_output

    return model.get_submodule(last_block_output(model, x[:1]))


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (as in `model.named_modules()`); unknown names list the convs."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise CnnlabError(
            f"--layer: the model has no layer '{name}' (conv layers: {', '.join(convs)})"
        )
    return modules[name]


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of `layer` inside `model` (for reports)."""
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise ValueError("layer is not part of the model")


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at input resolution and class probabilities (N, K).

    x: float input (N, C, H, W) as the model sees it (pixels / 255), on the model's device.
    target: class index per image (N,); default the predicted class.
    layer: the module whose output is explained; default the last conv block's output
    (`default_layer`, found with one extra forward pass of the first image).
    The model runs in eval mode; its training flag and requires_grad flags are restored and
    no gradient is left on its parameters. Results are on the input's device.

    Examples
    --------
    >>> import torch
    >>> from cnnlab.models import create_model
    >>> heat, probs = grad_cam(create_model("seed-mnist"), torch.rand(2, 1, 28, 28))
    >>> tuple(heat.shape), tuple(probs.shape), bool(heat.min() >= 0 and heat.max() <= 1)
    ((2, 28, 28), (2, 10), True)
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if layer is None:
        layer = default_layer(model, x)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
        if not torch.is_tensor(output) or output.ndim != 4:
            raise CnnlabError("the Grad-CAM layer must output a (N, C, h, w) tensor")
        a = output.detach().requires_grad_(True)
        captured["a"] = a
        return a.clone()  # an in-place op downstream (ReLU(inplace=True)) must not alter `a`

    with _LOCK:
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        handle = layer.register_forward_hook(hook)
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)  # the graph starts at the layer: less memory, no .grad
            # callers may sit in no_grad or inference_mode (a web handler): step out of both
            with torch.inference_mode(False), torch.enable_grad():
                # inference tensors cannot enter autograd; a clone outside inference mode can
                xin = x.detach().clone() if x.is_inference() else x.detach()
                logits = model(xin).float()  # (N, K)
                if "a" not in captured:
                    raise CnnlabError("the Grad-CAM layer did not run in the model's forward")
                if target is None:
                    target = logits.argmax(1)
                target = torch.as_tensor(target, dtype=torch.int64, device=logits.device)
                if target.shape != (x.shape[0],):
                    raise ValueError(f"target must have shape ({x.shape[0]},)")
                if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
                    raise ValueError(f"target classes must lie in 0..{logits.shape[1] - 1}")
                # images are independent in eval mode: the sum's gradient is per-image
                score = logits.gather(1, target[:, None]).sum()
                (grad,) = torch.autograd.grad(score, captured["a"])
        finally:
            handle.remove()
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
    a = captured["a"].detach().float()  # (N, K, h, w)
    alpha = grad.float().mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = torch.relu((alpha * a).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    cam = cam[:, 0]  # (N, H, W)
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    heat = torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return heat, torch.softmax(logits.detach(), dim=1)


def grad_cam_images(
    model: nn.Module,
    images_u8: torch.Tensor,
    *,
    targets: torch.Tensor | np.ndarray | None = None,
    layer: nn.Module | None = None,
    batch_size: int = CAM_BATCH,
    device: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for uint8 (N, C, H, W) images at the model's size, in batches.

    Returns heat (N, H, W) float32 in [0, 1] and probabilities (N, K) as NumPy arrays.
    Pixels become model input through `cnnlab.train.engine.to_input`, as in training.
    """
    from cnnlab.runtime import setup
    from cnnlab.train.engine import to_input

    if batch_size <= 0:
        raise CnnlabError(f"--batch-size must be a positive integer, got {batch_size}")
    rt = setup(device, bf16=False)  # float32: heatmaps and maps as exported models compute them
    model = rt.place(model)
    n = images_u8.shape[0]
    if targets is not None:
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    heats, probs = [], []
    with progress_bar(desc="grad-cam", enabled=progress, total=n) as bar:
        for start in range(0, n, batch_size):
            x = to_input(images_u8[start : start + batch_size].to(rt.device), rt)
            t = None if targets is None else targets[start : start + batch_size].to(rt.device)
            h, p = grad_cam(model, x, target=t, layer=layer)
            heats.append(h.cpu().numpy())
            probs.append(p.cpu().numpy())
            bar.update(x.shape[0])
    if not heats:
        return np.zeros((0, *images_u8.shape[2:]), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(heats).astype(np.float32), np.concatenate(probs)
