"""The prediction service without HTTP: one loaded model, uploads in, decisions out.

Data flow for one upload: bytes -> `cnnlab.images.decode_image` (size and pixel limits,
decompression bombs refused) -> `cnnlab.predict.prepare_image` (the one preprocessing path)
-> `Predictor.logits` (PyTorch, ONNX or TorchScript) -> `cnnlab.predict.probabilities` ->
a result like `cnnlab predict --json` plus `uncertain` and `seconds` -> one audit line.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.backends import Predictor, load_predictor
from cnnlab.errors import CnnlabError
from cnnlab.images import ImageTooLargeError, NotAnImageError, decode_image
from cnnlab.predict import _result, prepare_image, probabilities
from cnnlab.serve.audit import AuditLog, sha256_bytes, sha256_file, utc_now

MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MiB per image: a 200x200 inspection JPEG is ~10 KiB
MAX_PIXELS = 25_000_000  # 25 Mpx (e.g. 5000x5000): larger is refused before decoding
MAX_FILES = 16  # images per request
TOP_K = 3  # classes listed in top_k (all of them are in "probabilities")
ACCEPTED_TYPES = ("application/octet-stream", "")  # besides image/*: what curl sends by default


class UploadRejected(Exception):
    """An upload the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how many run at once."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS
    max_files: int = MAX_FILES
    max_concurrency: int = 2  # model calls at once; more requests wait for a slot

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_concurrency"):
            if int(getattr(self, name)) < 1:
                flag = "--" + name.replace("_", "-")
                raise CnnlabError(f"{flag} must be a positive integer, got {getattr(self, name)}")


class Service:
    """The model, loaded once and shared by every request, with its limits and audit trail."""

    def __init__(
        self,
        model_src: str | Path,
        *,
        reject_below: float | None = None,
        audit_log: str | Path | None = None,
        limits: Limits | None = None,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        from cnnlab.runtime import physical_cores

        if reject_below is not None and not 0.0 <= reject_below <= 1.0:
            raise CnnlabError(f"--reject-below must be a probability in [0, 1], got {reject_below}")
        self.limits = limits or Limits()
        # each model call gets its share of the cores: concurrent calls must not oversubscribe
        threads = threads or max(1, physical_cores() // self.limits.max_concurrency)
        self.predictor: Predictor = load_predictor(model_src, device=device, threads=threads)
        self.meta = self.predictor.meta
        self.class_names = list(self.meta["class_names"])
        self.channels = int(self.meta["input"]["channels"])
        self.size = tuple(self.meta["input"]["size"])
        self.model_sha256 = sha256_file(self.predictor.path)  # once: the file does not change
        self.reject_below = reject_below
        self.audit = AuditLog(audit_log) if audit_log is not None else None
        self.gradcam_note = _gradcam_unavailable(self.predictor)
        self._gradcam_lock = threading.Lock()
        self._gradcam_model: torch.nn.Module | None = None

    def describe(self) -> dict[str, Any]:
        """What GET /model answers: classes, input shape, versions, limits."""
        from cnnlab import __version__

        inp = self.meta["input"]
        return {
            "classes": self.class_names,
            "input": {
                "shape": [self.channels, *self.size],  # (C, H, W) the model sees
                "channels": self.channels,
                "size": list(self.size),
                "normalisation": inp.get("normalisation"),
            },
            "architecture": self.meta.get("architecture"),
            "backend": self.predictor.backend,
            "file": self.predictor.path.name,
            "sha256": self.model_sha256,
            "version": __version__,
            "model_format_version": self.meta.get("format_version"),
            "trained": self.meta.get("trained"),
            "reject_below": self.reject_below,
            "gradcam": self.gradcam_note is None,
            "limits": {
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels,
                "max_files": self.limits.max_files,
                "max_concurrency": self.limits.max_concurrency,
            },
        }

    def check_upload(self, name: str, content_type: str | None, size: int) -> None:
        """Refuse, before decoding, what is not an image type or is too large."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        if not (ctype.startswith("image/") or ctype in ACCEPTED_TYPES):
            raise UploadRejected(
                415, f"{name}: only image uploads are accepted, this one was sent as '{ctype}'"
            )
        if size > self.limits.max_upload_bytes:
            raise UploadRejected(
                413,
                f"{name}: {size} bytes, more than the {self.limits.max_upload_bytes} allowed "
                "per image",
            )

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """Upload bytes -> uint8 (C, H, W) model input; refusals carry their HTTP status."""
        if not data:
            raise UploadRejected(422, f"{name}: empty upload")
        try:
            img = decode_image(data, name=name, max_pixels=self.limits.max_pixels)
            return prepare_image(img, self.channels, self.size)
        except NotAnImageError as e:
            raise UploadRejected(415, f"{e} (send PNG, JPEG, BMP, TIFF, GIF or WebP)") from None
        except ImageTooLargeError as e:
            raise UploadRejected(413, str(e)) from None
        except CnnlabError as e:
            raise UploadRejected(422, str(e)) from None

    def predict(
        self, uploads: list[tuple[str, bytes]], *, gradcam: bool = False
    ) -> list[dict[str, Any]]:
        """Decide every upload (all are decoded first: one bad image refuses the request).

        Each result: label, probability, top_k, probabilities, uncertain, seconds (decode to
        probabilities, this image alone), image_sha256, and gradcam_png when asked and there.
        """
        inputs = []
        for name, data in uploads:
            t0 = time.perf_counter()
            inputs.append((self.decode(name, data), time.perf_counter() - t0))
        results = []
        for (name, data), (x, decode_s) in zip(uploads, inputs, strict=True):
            t1 = time.perf_counter()
            logits = self.predictor.logits(torch.from_numpy(np.stack([x])))  # (1, C, H, W)
            probs = probabilities(logits, self.meta)[0]
            r = {
                "file": name,
                **_result(probs, self.class_names, min(TOP_K, len(self.class_names))),
            }
            r["uncertain"] = self.reject_below is not None and r["probability"] < self.reject_below
            r["seconds"] = round(decode_s + time.perf_counter() - t1, 6)
            r["image_sha256"] = sha256_bytes(data)
            if gradcam and self.gradcam_note is None:
                r["gradcam_png"] = self._gradcam_png(x)
            if self.audit is not None:
                self.audit.append(
                    {
                        "time": utc_now(),
                        "image_sha256": r["image_sha256"],
                        "model_sha256": self.model_sha256,
                        "file": name,
                        "label": r["label"],
                        "probabilities": r["probabilities"],
                        "uncertain": r["uncertain"],
                    }
                )
            results.append(r)
        return results

    def _gradcam_png(self, x: np.ndarray) -> str:
        """Base64 PNG of the Grad-CAM overlay on the model's input image (PyTorch only)."""
        from PIL import Image

        from cnnlab.explain import grad_cam, overlay
        from cnnlab.train.engine import to_input

        with self._gradcam_lock:  # hooks and gradients on a private model, one at a time
            if self._gradcam_model is None:  # the plain layers: Grad-CAM hooks the last
                # nn.Conv2d, which the predictor's fused kernels have replaced
                from cnnlab.train.checkpoint import load_model

                plain, _ = load_model(self.predictor.path)  # type: ignore[attr-defined]
                self._gradcam_model = plain.cpu().float().eval()
            heat, _ = grad_cam(self._gradcam_model, to_input(torch.from_numpy(np.stack([x]))))
        image = x.transpose(1, 2, 0)
        image = image[..., 0] if image.shape[2] == 1 else image
        heat0 = heat[0].detach().cpu().numpy() if torch.is_tensor(heat) else np.asarray(heat[0])
        rgb = overlay(image, heat0)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")


def _gradcam_unavailable(predictor: Predictor) -> str | None:
    """None when Grad-CAM overlays can be made, else why not."""
    if predictor.backend != "torch":
        return "Grad-CAM needs the PyTorch model (a run folder or .safetensors file)"
    try:
        import cnnlab.explain as explain
    except ImportError:
        return "this cnnlab has no cnnlab.explain (Grad-CAM)"
    if not (hasattr(explain, "grad_cam") and hasattr(explain, "overlay")):
        return "cnnlab.explain has no grad_cam / overlay"
    return None
