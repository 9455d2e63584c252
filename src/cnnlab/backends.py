"""Where the model sees its input: one `Predictor` per backend (PyTorch, ONNX, TorchScript).

Every backend gets the same uint8 (N, C, H, W) batch, made by the one preprocessing path
(`cnnlab.predict.prepare_image`), and scales it with the same
`cnnlab.train.engine.to_input` (x / 255) before its model runs. An exported model therefore
cannot see differently prepared pixels than the trained one; only the forward pass differs.

Examples
--------
>>> p = load_predictor("runs/mnist/model.onnx")  # doctest: +SKIP
>>> p.backend, p.meta["class_names"][:3], p.logits(images_u8).shape  # doctest: +SKIP
('onnx', ['0', '1', '2'], torch.Size([8, 10]))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cnnlab.data.augment import tta_symmetry
from cnnlab.errors import CnnlabError
from cnnlab.train.checkpoint import load_model, resolve_model_file
from cnnlab.train.engine import EVAL_BATCH, to_input, tta_logits

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")
TORCHSCRIPT_META_FILE = "cnnlab_model.json"  # extra file in the TorchScript archive
ONNX_META_KEY = "cnnlab_model"  # metadata_props key holding the model JSON
INSTALL_HINT = "pip install 'cnnlab[{extra}]'"


class Predictor(Protocol):
    """A loaded model: its model JSON and logits for uint8 images at its input size."""

    backend: str  # "torch", "onnx" or "torchscript"
    path: Path  # the model file (hashed for the audit trail)
    meta: dict[str, Any]  # the model JSON (class_names, input channels / size, normalisation)

    def logits(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) float32 on the CPU for uint8 (N, C, H, W) images."""
        ...


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or one line telling the user which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CnnlabError(
            f"this needs the optional package '{module}': {INSTALL_HINT.format(extra=extra)}"
        ) from None


class TorchPredictor:
    """The trained PyTorch model (run folder or .safetensors), exactly as `predict` ran it."""

    backend = "torch"

    def __init__(
        self,
        src: str | Path,
        *,
        device: str = "auto",
        threads: int | None = None,
        bf16: bool = False,
        fuse_pool: bool = True,
    ) -> None:
        """`bf16`: autocast as training does on CPUs where bf16 is faster. Off by default: its
        probabilities differ from float32 by up to a few hundredths (0.033 on seed-neu), which
        moves reject thresholds and calibration, and the exported models run in float32.
        `fuse_pool`: max-pool + ReLU pairs as one kernel on a CPU, with the convolution before
        where a fused block takes it (`cnnlab.models.pool_relu`, `cnnlab.models.winograd`; the
        same logits to float32 rounding); False keeps ATen's, for comparison."""
        from cnnlab.models.pool_relu import fuse_on_cpu
        from cnnlab.runtime import setup

        self.path = resolve_model_file(src)
        model, self.meta = load_model(src)
        self.runtime = setup(device, threads=threads, bf16=bf16)
        self.model: nn.Module = self.runtime.place(model)
        self.pool_relu = fuse_on_cpu(self.model, self.runtime.device) if fuse_pool else None

    def logits(self, images_u8: torch.Tensor) -> torch.Tensor:
        from cnnlab.train.engine import predict_logits

        return predict_logits(self.model, images_u8, runtime=self.runtime, tta=self.meta.get("tta"))


class OnnxPredictor:
    """An exported .onnx model run by onnxruntime (CPU); input float32 NCHW already / 255."""

    backend = "onnx"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        from cnnlab.runtime import physical_cores

        ort = require("onnxruntime", "export")
        self.path = Path(path)
        if not self.path.is_file():
            raise CnnlabError("no such model file", self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or physical_cores()
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own error types for bad files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CnnlabError(f"not a readable ONNX model ({msg})", self.path) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = parse_meta(props.get(ONNX_META_KEY), self.path, "ONNX metadata_props")
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, images_u8: torch.Tensor) -> torch.Tensor:
        def run(batch: torch.Tensor) -> torch.Tensor:
            x = to_input(batch.cpu().contiguous()).numpy()
            return torch.from_numpy(self.session.run(None, {self.input_name: x})[0]).float()

        symmetry = tta_symmetry(self.meta.get("tta"))
        out = [tta_logits(run, batch, symmetry) for batch in images_u8.split(EVAL_BATCH)]
        return torch.cat(out) if out else torch.zeros((0, len(self.meta["class_names"])))


class TorchScriptPredictor:
    """An exported TorchScript archive (.pt), loaded by torch.jit.load with its model JSON."""

    backend = "torchscript"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import warnings

        from cnnlab.runtime import setup_threads

        self.path = Path(path)
        if not self.path.is_file():
            raise CnnlabError("no such model file", self.path)
        setup_threads(threads)
        extra = {TORCHSCRIPT_META_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CnnlabError(f"not a readable TorchScript archive ({msg})", self.path) from None
        self.module.eval()
        self.meta = parse_meta(extra[TORCHSCRIPT_META_FILE], self.path, TORCHSCRIPT_META_FILE)

    @torch.inference_mode()
    def logits(self, images_u8: torch.Tensor) -> torch.Tensor:
        def run(batch: torch.Tensor) -> torch.Tensor:
            return self.module(to_input(batch.cpu().contiguous())).float()

        symmetry = tta_symmetry(self.meta.get("tta"))
        out = [tta_logits(run, batch, symmetry) for batch in images_u8.split(EVAL_BATCH)]
        return torch.cat(out) if out else torch.zeros((0, len(self.meta["class_names"])))


def parse_meta(raw: str | bytes | None, path: Path, where: str) -> dict[str, Any]:
    """The model JSON embedded in an exported file; missing or malformed is a user error."""
    if not raw:
        raise CnnlabError(f"exported model without cnnlab metadata (no {where})", path)
    try:
        meta = json.loads(raw)
        _ = meta["class_names"], meta["input"]["channels"], meta["input"]["size"]
        tta_symmetry(meta.get("tta"))
    except (ValueError, KeyError, TypeError) as e:
        raise CnnlabError(f"cnnlab metadata in {where} is malformed ({e})", path) from None
    return meta


def load_predictor(
    src: str | Path, *, device: str = "auto", threads: int | None = None
) -> Predictor:
    """Load a run folder / .safetensors (PyTorch), .onnx (onnxruntime) or .pt (TorchScript).

    `device` applies to the PyTorch backend (exported models run on the CPU); `threads` is
    the CPU threads one call may use (default: the physical cores; 0 or less is refused,
    for every backend and every command that loads a model through here).
    """
    if threads is not None and threads < 1:
        raise CnnlabError(f"--threads must be a positive integer, got {threads}")
    path = Path(src)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxPredictor(path, threads=threads)
    if suffix in TORCHSCRIPT_SUFFIXES:
        return TorchScriptPredictor(path, threads=threads)
    return TorchPredictor(path, device=device, threads=threads)
