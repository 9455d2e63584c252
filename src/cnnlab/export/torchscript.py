"""TorchScript export: a traced module for C++ / libtorch, with the model JSON inside.

Same input and output as the ONNX export (float32 pixels / 255 in, logits out). The model
JSON travels as the archive's extra file `cnnlab_model.json`. TorchScript is deprecated
upstream (torch 2.13 warns on trace / save / load); ONNX is the recommended format.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.atomic import atomic_path
from cnnlab.backends import TORCHSCRIPT_META_FILE
from cnnlab.errors import CnnlabError


def export_torchscript(model: nn.Module, meta: dict[str, Any], path: str | Path) -> Path:
    """Trace `model` on a batch of 2 and save it with the model JSON embedded; atomic."""
    path = Path(path)
    c, (h, w) = int(meta["input"]["channels"]), meta["input"]["size"]
    example = torch.rand(2, c, h, w)
    full = {**meta, "export": {"format": "torchscript", "input": "float32 pixels / 255"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation warnings
            traced = torch.jit.trace(model.eval().cpu(), example)
            with atomic_path(path) as tmp:
                torch.jit.save(
                    traced, str(tmp), _extra_files={TORCHSCRIPT_META_FILE: json.dumps(full)}
                )
    except OSError as e:
        raise CnnlabError(f"cannot write TorchScript model ({e.strerror or e})", path) from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CnnlabError(f"TorchScript export failed ({first})", path) from None
    return path
