"""Where an image enters and leaves cnnlab: decoding and encoding files with Pillow.

Every decoder error becomes a `CnnlabError` naming the file, so a missing, truncated or
non-image file is one clear line for the user, never a traceback.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.atomic import atomic_path
from cnnlab.errors import CnnlabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")
MAX_PIXELS = 64_000_000  # refuse decompression bombs: 64 Mpx is far beyond any inspection image

Mode = Literal["keep", "L", "RGB"]


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an image suffix cnnlab decodes."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class NotAnImageError(CnnlabError):
    """The bytes are not an image format Pillow decodes (a server answers 415)."""


class ImageTooLargeError(CnnlabError):
    """More pixels than allowed, or a decompression bomb (a server answers 413)."""


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, turning every failure into a one-line error."""
    path = Path(path)
    if not path.exists():
        raise CnnlabError("no such file", path)
    if path.is_dir():
        raise CnnlabError("is a folder, expected an image file", path)
    return _decode(path, path, MAX_PIXELS)


def decode_image(data: bytes, *, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image held in memory (an upload) with the same checks and errors as a file."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | io.BytesIO, where: str | Path, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {img.width}x{img.height} pixels, more than {max_pixels} allowed",
                    where,
                )
            img.load()
    except CnnlabError:
        raise
    except UnidentifiedImageError:
        raise NotAnImageError("not an image file cnnlab can read", where) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"image refused as a decompression bomb ({e})", where) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CnnlabError(f"unreadable or truncated image ({e})", where) from None
    return img


def pil_to_array(img: Image.Image, mode: Mode = "keep") -> np.ndarray:
    """Convert a decoded PIL image to an array: HxW (gray) or HxWx3 (RGB).

    mode="keep": 8-bit gray stays uint8, 16-bit gray stays uint16, colour becomes RGB uint8
    (alpha dropped, palettes expanded). mode="L" / "RGB": uint8 with that many channels;
    16-bit input is scaled to 8 bits (value / 257, rounded).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        arr16 = np.clip(arr, 0, 65535).astype(np.uint16)
        if mode == "keep":
            return arr16
        arr8 = np.round(arr16 / 257.0).astype(np.uint8)
        return arr8 if mode == "L" else np.repeat(arr8[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr8 = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return arr8 if mode != "RGB" else np.repeat(arr8[..., None], 3, axis=2)
    if mode == "keep":
        gray = img.mode in ("1", "L", "LA") or (img.mode == "P" and _palette_is_gray(img))
        mode = "L" if gray else "RGB"
    return np.asarray(img.convert(mode))


def _palette_is_gray(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def read_image(path: str | Path, mode: Mode = "keep") -> np.ndarray:
    """Decode an image file to a NumPy array (see `pil_to_array` for modes and dtypes)."""
    return pil_to_array(open_image(path), mode)


def write_image(path: str | Path, arr: np.ndarray) -> Path:
    """Write uint8 HxW / HxWx3 or uint16 HxW atomically; the suffix picks the format."""
    path = Path(path)
    arr = np.asarray(arr)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"write_image wants uint8 or uint16, got {arr.dtype}")
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise CnnlabError("16-bit images can only be written as grayscale (HxW)", path)
    img = Image.fromarray(arr)  # uint16 HxW -> mode I;16
    if not path.suffix:
        raise CnnlabError("output file needs a suffix such as .png", path)
    try:
        with atomic_path(path) as tmp:
            img.save(tmp)
    except (OSError, ValueError, KeyError) as e:
        raise CnnlabError(f"cannot write image ({e})", path) from None
    return path
