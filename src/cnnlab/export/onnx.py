"""ONNX export: the trained model as a graph onnxruntime (or any ONNX runtime) can run.

Input: float32 (batch, C, H, W) pixels already scaled by the model's normalisation (x / 255,
`cnnlab.train.engine.to_input`), so every backend shares the same Python preprocessing.
Output: logits (batch, K); softmax gives the probabilities. The batch axis is dynamic. The
model JSON (class names, input size, normalisation) rides in the file's metadata_props.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.atomic import atomic_path
from cnnlab.backends import ONNX_META_KEY, require
from cnnlab.errors import CnnlabError

INPUT_NAME = "image"  # float32 (batch, C, H, W), pixels / 255
OUTPUT_NAME = "logits"  # float32 (batch, K)


def onnx_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The model JSON plus what an ONNX user needs to feed the graph."""
    from cnnlab import __version__

    return {
        **meta,
        "export": {
            "format": "onnx",
            "input_name": INPUT_NAME,
            "input": "float32 (batch, C, H, W): uint8 pixels * input.normalisation.scale "
            "(cnnlab.train.engine.to_input), RGB or gray as input.channels says",
            "output_name": OUTPUT_NAME,
            "output": "float32 (batch, K) logits; softmax gives the class probabilities",
            "torch_version": torch.__version__.split("+")[0],
            "cnnlab_version": __version__,
        },
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress lines, warnings and log records (torchvision absent)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def export_onnx(model: nn.Module, meta: dict[str, Any], path: str | Path) -> Path:
    """Write `model` as a checked ONNX file (dynamic batch, model JSON embedded); atomic."""
    onnx = require("onnx", "export")
    require("onnxscript", "export")  # torch.onnx's exporter is built on it
    path = Path(path)
    c, (h, w) = int(meta["input"]["channels"]), meta["input"]["size"]
    example = torch.rand(2, c, h, w)  # batch 2: a batch of 1 would be specialised away
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                model.eval().cpu(),
                (example,),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the message says what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"ONNX export failed ({first})", path) from None
    proto = program.model_proto
    full = onnx_meta(meta)
    for key, value in (
        (ONNX_META_KEY, full),
        ("class_names", meta["class_names"]),
        ("input", meta["input"]),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name, proto.doc_string = "cnnlab", f"cnnlab {meta.get('architecture', '')}"
    onnx.checker.check_model(proto, full_check=True)
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
    except OSError as e:
        raise CnnlabError(f"cannot write ONNX model ({e.strerror or e})", path) from None
    return path
