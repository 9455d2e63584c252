"""`load_dataset`: from a name or a path on disk to one decoded, split `ImageDataset`.

The flow: resolve the spec to a path -> recognise the layout (`layouts.detect`) -> decode
every image once through `cnnlab.images` and `cnnlab.data.preprocess` (or reuse the cache)
-> split (the data's own split, else stratified with a seed) -> `ImageDataset`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cnnlab.data import cache as cache_mod
from cnnlab.data import mnist, neu
from cnnlab.data.dataset import Box, ImageDataset
from cnnlab.data.layouts import LAYOUTS_ACCEPTED, Source, detect, most_common
from cnnlab.data.preprocess import to_model_input
from cnnlab.data.splits import make_splits
from cnnlab.errors import CnnlabError
from cnnlab.images import open_image, pil_to_array
from cnnlab.paths import data_root
from cnnlab.progress import progress_bar

DATASET_NAMES = ("mnist", "neu")


def resolve_spec(spec: str | Path, *, download: bool = True, progress: bool = True) -> Path:
    """The folder or file a dataset spec names.

    "mnist" is `$CNNLAB_DATA/mnist` (downloaded there from public mirrors, MD5-checked, when
    the files are missing and `download` is true); "neu" is `$CNNLAB_DATA/neu-det` or
    `$CNNLAB_DATA/neu-cls`; anything else is a path (use `./mnist` for a local folder
    called mnist).
    """
    name = str(spec).strip().lower() if isinstance(spec, str) else None
    if name == "mnist":
        folder = data_root() / "mnist"
        if mnist.find_mnist_files(folder) is None:
            if not download:
                raise CnnlabError("MNIST files missing (download disabled)", folder)
            mnist.download_mnist(folder, progress=progress)
        return folder
    if name == "neu":
        for sub in ("neu-det", "neu-cls"):
            if (data_root() / sub).is_dir():
                return data_root() / sub
        raise CnnlabError(
            f"NEU data not found (looked for neu-det/ and neu-cls/ here; set CNNLAB_DATA); "
            f"{neu.NEU_SOURCE}; {LAYOUTS_ACCEPTED}",
            data_root(),
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise CnnlabError(
            f"no such file or folder (named datasets: {', '.join(DATASET_NAMES)})", path
        )
    return path


def load_dataset(
    spec: str | Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    test_split: float = 0.2,
    val_split: float = 0.0,
    cache: bool = True,
    progress: bool = True,
    skip_bad: bool = False,
    download: bool = True,
) -> ImageDataset:
    """Load a dataset from a name ("mnist", "neu") or a path into one in-memory `ImageDataset`.

    Always returns splits "train" and "test" (and "val" when `val_split` > 0 or the data
    has its own validation split).

    Parameters
    ----------
    spec : "mnist", "neu", or a folder / .npy file in any accepted layout (MNIST IDX files,
        NEU-CLS, NEU-DET, class-per-folder with optional train/val/test folders, .npy pairs).
    channels : 1 or 3; None keeps the data's own (1 when every image is gray, else 3).
    size : (H, W) to resize to; None keeps the native size, and a set of mixed sizes is
        resized to its most common size (a note says so).
    seed, test_split : the stratified train/test split used only when the data has no test
        split of its own (default 80/20).
    val_split : fraction of train carved out as a stratified "val" split.
    cache : reuse / store decoded images in `$CNNLAB_CACHE` (keyed by file contents).
    progress : tqdm bar on stderr while decoding (only when stderr is a terminal).
    skip_bad : skip unreadable images with a note instead of failing on the first one.
    download : allow downloading MNIST when "mnist" is asked for and missing.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from cnnlab.images import write_image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     for i in range(5):
    ...         _ = write_image(root / c / f"{i}.png", np.full((8, 6), i, np.uint8))
    >>> ds = load_dataset(root, cache=False, progress=False)
    >>> ds.class_names, tuple(ds.images.shape), len(ds.split("test"))
    (['cat', 'dog'], (10, 1, 8, 6), 2)
    """
    if channels not in (None, 1, 3):
        raise CnnlabError(f"channels must be 1 or 3, got {channels}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise CnnlabError(f"size must be (H, W) with positive values, got {size}")
    path = resolve_spec(spec, download=download, progress=progress)
    src = detect(path)
    if not src.files:
        raise CnnlabError("dataset has no images", path)
    if src.arrays is not None and (not cache or _is_identity(src.arrays, channels, size)):
        images, kept, boxes, notes = _from_arrays(src, channels, size), None, {}, []
    else:
        images, kept, boxes, notes = _decode_cached(src, channels, size, cache, progress, skip_bad)
    labels = torch.tensor(src.labels, dtype=torch.int64)
    files = list(src.files)
    own = dict(src.splits)
    if kept is not None:
        labels = labels[kept]
        files = [files[i] for i in kept.tolist()]
        pos = {int(j): i for i, j in enumerate(kept.tolist())}
        own = {k: [pos[i] for i in v if i in pos] for k, v in own.items()}
    all_notes = [*src.notes, *notes]
    splits = make_splits(
        labels.numpy(), own, seed=seed, test_split=test_split, val_split=val_split,
        notes=all_notes,
    )  # fmt: skip
    return ImageDataset(
        images=images,
        labels=labels,
        class_names=list(src.class_names),
        files=files,
        splits=splits,
        layout=src.layout,
        root=str(src.root),
        boxes=boxes,
        notes=all_notes,
    )


def _is_identity(a: np.ndarray, channels: int | None, size: tuple[int, int] | None) -> bool:
    """True when gray arrays go to the model as they are (no channel change, no resize)."""
    return a.ndim == 3 and channels in (None, 1) and (size is None or tuple(size) == a.shape[1:])


def _from_arrays(src: Source, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """IDX / .npy arrays (N, H, W[, C]) uint8 -> (N, C, H, W) through `to_model_input`."""
    a = src.arrays
    assert a is not None
    native = 1 if a.ndim == 3 else 3
    c = channels or native
    if _is_identity(a, channels, size):
        # Fast path, identical to to_model_input on each image: HxW -> 1xHxW.
        return torch.from_numpy(np.ascontiguousarray(a[:, None]))
    out_size = tuple(size) if size is not None else a.shape[1:3]
    out = np.empty((len(a), c, *out_size), dtype=np.uint8)
    for i in range(len(a)):
        out[i] = to_model_input(a[i], c, size)
    return torch.from_numpy(out)


def _decode_cached(
    src: Source,
    channels: int | None,
    size: tuple[int, int] | None,
    use_cache: bool,
    progress: bool,
    skip_bad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, list[Box]], list[str]]:
    """Decode a Source (files, or arrays needing conversion), or reuse the cached result."""
    key = None
    if use_cache:
        key = cache_key(src, channels=channels, size=size, skip_bad=skip_bad, progress=progress)
        hit = cache_mod.load(key)
        if hit is not None:
            return hit
    if src.arrays is not None:  # IDX / .npy needing a channel change or a resize
        result = (_from_arrays(src, channels, size), None, {}, [])
    else:
        result = decode_files(
            src, channels=channels, size=size, progress=progress, skip_bad=skip_bad
        )
    if key is not None:
        cache_mod.store(key, *result)
    return result


def cache_key(
    src: Source,
    *,
    channels: int | None,
    size: tuple[int, int] | None,
    skip_bad: bool,
    progress: bool = False,
) -> str:
    """sha256 over the decoding options and, per source file, its relative name, size and
    the sha256 of its bytes: "keyed by content" means the file bytes, not their dates.
    """
    h = hashlib.sha256()
    opts = {"v": cache_mod.FORMAT_VERSION, "layout": src.layout, "channels": channels,
            "size": list(size) if size else None, "skip_bad": skip_bad}  # fmt: skip
    h.update(json.dumps(opts, sort_keys=True).encode())
    files = sorted(src.content_files, key=lambda p: p.relative_to(src.root).as_posix())
    for p in progress_bar(files, desc="hashing", enabled=progress and len(files) >= SMALL):
        try:
            data = p.read_bytes()
        except OSError as e:
            raise CnnlabError(f"cannot read file ({e.strerror})", p) from None
        rel = p.relative_to(src.root).as_posix()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    h.update(json.dumps([src.files, src.labels]).encode())
    return h.hexdigest()


SMALL = 200  # files below which a bar would only flicker


GRAY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F")


def decode_files(
    src: Source,
    *,
    channels: int | None,
    size: tuple[int, int] | None,
    progress: bool = True,
    skip_bad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, list[Box]], list[str]]:
    """Decode every image file of a Source to uint8 (N, C, H, W).

    Returns (images, kept, boxes, notes); `kept` holds the indices of the decoded entries
    when some were skipped (`skip_bad`), else None. Colour images whose three planes are
    equal (gray JPEGs saved as RGB, as in NEU-DET) count as gray.
    """
    decoded: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    for i, p in enumerate(
        progress_bar(src.paths, desc="decoding", enabled=progress and len(src.paths) >= SMALL)
    ):
        try:
            img = open_image(p)
        except CnnlabError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        arr = pil_to_array(img, "L" if img.mode in GRAY_MODES else "keep")
        if arr.ndim == 3 and _planes_equal(arr):
            arr = arr[..., 0]
        decoded.append(arr)
        kept.append(i)
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    if not decoded:
        raise CnnlabError("no readable images", src.root)
    c = channels or (1 if all(a.ndim == 2 for a in decoded) else 3)
    sizes = [a.shape[:2] for a in decoded]
    target = tuple(size) if size is not None else None
    if target is None and len(set(sizes)) > 1:
        target = most_common(sizes)
        notes.append(
            f"images have {len(set(sizes))} different sizes; all resized to "
            f"{target[0]}x{target[1]} (H x W), the most common"
        )
    h, w = target if target is not None else sizes[0]
    out = np.empty((len(decoded), c, h, w), dtype=np.uint8)
    for j, a in enumerate(decoded):
        out[j] = to_model_input(a, c, target)
    boxes: dict[int, list[Box]] = {}
    for j, i in enumerate(kept):
        if i in src.boxes:
            sh, sw = sizes[j]
            boxes[j] = [_scale_box(b, h / sh, w / sw) for b in src.boxes[i]]
    kept_t = None if len(kept) == len(src.paths) else torch.tensor(kept, dtype=torch.int64)
    return torch.from_numpy(out), kept_t, boxes, notes


def _scale_box(b: Box, sy: float, sx: float) -> Box:
    if sy == 1 and sx == 1:
        return b
    return (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy))


def _planes_equal(arr: np.ndarray) -> bool:
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
