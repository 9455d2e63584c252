"""MNIST: the IDX file format, the four files, and a checked download from public mirrors.

IDX (LeCun's format): 2 zero bytes, a type byte (0x08 = unsigned byte), a byte giving the
number of dimensions, one big-endian uint32 per dimension, then the raw values. Files may be
gzip-compressed (`.gz`) or raw; both are read with `np.frombuffer`, no per-image loop.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cnnlab.atomic import atomic_open
from cnnlab.errors import CnnlabError

# The four files, by role; names as published (without .gz).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of each file's DECOMPRESSED content. Obtained from the real files in
# /work/shared/data/mnist with `zcat FILE.gz | md5sum` (the classic published MD5s are for the
# .gz files, whose bytes differ between mirrors that recompressed them; the content does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Maintained public mirrors serving the .gz files, tried in order.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or .gz) of unsigned bytes into a uint8 array of its declared shape.

    A wrong magic number, a truncated file or a broken gzip stream is a `CnnlabError`
    naming the file.

    Examples
    --------
    >>> import gzip, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte.gz"
    >>> _ = p.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise CnnlabError(f"truncated IDX file ({len(raw)} bytes, no header)", path)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or not 1 <= raw[3] <= 4:
        raise CnnlabError(
            f"not an IDX file of unsigned bytes (magic number {raw[:4].hex()}, "
            f"expected 000008 followed by 01..04)",
            path,
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CnnlabError("truncated IDX file (header cut short)", path)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "oversized"
        raise CnnlabError(
            f"{what} IDX file: header declares shape {dims} ({expected} bytes), "
            f"file has {len(raw)} bytes",
            path,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (by magic bytes, not by name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CnnlabError("no such file", path) from None
    except OSError as e:
        raise CnnlabError(f"cannot read file ({e.strerror})", path) from None
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise CnnlabError(f"broken or truncated gzip file ({e})", path) from None
    return data


def find_mnist_files(folder: str | Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` by role (raw or .gz), or None when any is missing."""
    folder = Path(folder)
    found = {}
    for role, name in MNIST_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def read_mnist(folder: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Images uint8 (70000, 28, 28) and labels uint8, train first then test, in file order.

    Returns (images, labels, n_train). Works for any folder holding the four files under the
    MNIST names (Fashion-MNIST uses the same names and format).
    """
    files = find_mnist_files(folder)
    if files is None:
        raise CnnlabError(
            "MNIST files missing (need " + ", ".join(MNIST_FILES.values()) + ", raw or .gz)",
            folder,
        )
    parts = {}
    for role, path in files.items():
        arr = read_idx(path)
        want = 3 if role.endswith("images") else 1
        if arr.ndim != want:
            raise CnnlabError(f"expected a {want}-D IDX file, got shape {arr.shape}", path)
        parts[role] = arr
    for split in ("train", "test"):
        ni, nl = len(parts[f"{split}_images"]), len(parts[f"{split}_labels"])
        if ni != nl:
            raise CnnlabError(
                f"{ni} images but {nl} labels in {files[f'{split}_labels'].name}",
                files[f"{split}_images"],
            )
    images = np.concatenate([parts["train_images"], parts["test_images"]])
    labels = np.concatenate([parts["train_labels"], parts["test_labels"]])
    return images, labels, len(parts["train_images"])


def content_md5(path: str | Path) -> str:
    """MD5 of a file's decompressed content (the value `MNIST_MD5` records)."""
    return hashlib.md5(_read_bytes(Path(path))).hexdigest()


def verify_mnist(folder: str | Path, md5: Mapping[str, str] = MNIST_MD5) -> dict[str, str]:
    """Check the four files against the expected content MD5s; returns name -> md5.

    Raises `CnnlabError` naming the first file whose content differs.
    """
    files = find_mnist_files(folder)
    if files is None:
        raise CnnlabError("MNIST files missing", folder)
    out = {}
    for path in files.values():
        name = path.name.removesuffix(".gz")
        got = content_md5(path)
        if name in md5 and got != md5[name]:
            raise CnnlabError(f"MD5 of content is {got}, expected {md5[name]}", path)
        out[name] = got
    return out


def download_mnist(
    folder: str | Path,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    md5: Mapping[str, str] = MNIST_MD5,
    timeout: float = 30.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Download the missing MNIST files into `folder`, trying each mirror in turn.

    Each `.gz` is decompressed and its content MD5 checked against `md5` before it is written
    (atomically) as `folder/NAME.gz`; a mirror that fails (HTTP error, timeout, truncated
    gzip, wrong checksum) hands over to the next. When every mirror fails, the error lists
    what each one did. `mirrors` and `md5` are parameters so tests can use a local server.
    """
    folder = Path(folder)
    for name in MNIST_FILES.values():
        if (folder / name).is_file() or (folder / f"{name}.gz").is_file():
            continue
        attempts = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{name}.gz"
            if progress:
                print(f"cnnlab: downloading {url}", file=sys.stderr)
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    blob = resp.read()
            except urllib.error.HTTPError as e:
                attempts.append(f"{url}: HTTP {e.code}")
                continue
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                attempts.append(f"{url}: {reason}")
                continue
            try:
                content = gzip.decompress(blob)
            except (EOFError, OSError, zlib.error):
                attempts.append(f"{url}: truncated or not gzip ({len(blob)} bytes)")
                continue
            got = hashlib.md5(content).hexdigest()
            if name in md5 and got != md5[name]:
                attempts.append(f"{url}: MD5 of content {got}, expected {md5[name]}")
                continue
            with atomic_open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
            break
        else:
            raise CnnlabError(
                f"could not download {name}.gz ({'; '.join(attempts) or 'no mirrors given'}); "
                f"if offline, copy the four MNIST files into this folder",
                folder,
            )
    files = find_mnist_files(folder)
    if files is None:  # pragma: no cover - every file was either present or written above
        raise CnnlabError("MNIST files missing after download", folder)
    return files
