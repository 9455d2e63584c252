"""Recognise what is on disk and list it: which files, which labels, which splits.

Each layout reader returns a `Source` (names, labels, own splits, boxes, and either image
files still to decode or arrays already in memory); nothing is decoded here except IDX and
.npy arrays, which are arrays already. `load.py` turns a Source into an `ImageDataset`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data import mnist, neu
from cnnlab.data.dataset import Box
from cnnlab.errors import CnnlabError
from cnnlab.images import is_image_file

LAYOUTS_ACCEPTED = (
    "accepted layouts: the four MNIST IDX files; NEU-CLS (Cr_1.bmp, In_1.bmp, ... in one "
    "folder); NEU-DET (IMAGES/*.jpg + ANNOTATIONS/*.xml); one folder per class, optionally "
    "under train/, val/ or valid/, test/; a pair of images/labels .npy files "
    "(e.g. NEU_train_imgs.npy + NEU_train_labels.npy, or images.npy + labels.npy)"
)

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}  # fmt: skip


@dataclass
class Source:
    """What a layout reader found: one entry per image, not yet decoded (unless `arrays`)."""

    layout: str
    root: Path
    class_names: list[str]
    files: list[str]  # unique names relative to root
    labels: list[int]
    paths: list[Path] = field(default_factory=list)  # image files to decode (file layouts)
    arrays: np.ndarray | None = None  # (N, H, W[, C]) uint8 (IDX and .npy layouts)
    splits: dict[str, list[int]] = field(default_factory=dict)  # the data's own splits
    boxes: dict[int, list[Box]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    content_files: list[Path] = field(default_factory=list)  # files whose bytes key the cache


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _children(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of a folder, hidden entries left out, sorted by name."""
    try:
        entries = sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: p.name)
    except OSError as e:
        raise CnnlabError(f"cannot list folder ({e.strerror})", folder) from None
    return [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]


def detect(path: Path) -> Source:
    """Recognise the layout at `path` (a folder, or one .npy file of a pair) and list it."""
    if not path.exists():
        raise CnnlabError("no such file or folder", path)
    if path.is_file():
        if path.suffix.lower() == ".npy":
            return read_npy_pair(path.parent, only=path)
        raise CnnlabError(f"expected a dataset folder or an images .npy file; {LAYOUTS_ACCEPTED}",
                          path)  # fmt: skip
    dirs, files = _children(path)
    if not dirs and not files:
        raise CnnlabError("dataset folder is empty", path)
    if mnist.find_mnist_files(path) is not None:
        return read_mnist_folder(path)
    by_lower = {d.name.lower(): d for d in dirs}
    if "images" in by_lower and "annotations" in by_lower:
        return read_neu_det(path, by_lower["images"], by_lower["annotations"])
    images = [f for f in files if is_image_file(f)]
    if images and all(neu.is_neu_cls_name(f.stem) for f in images):
        return read_neu_cls(path, images)
    if any(f.suffix.lower() == ".npy" for f in files):
        return read_npy_pair(path)
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_FOLDERS]
    if split_dirs:
        return read_class_folders(path, split_dirs)
    if dirs and any(_has_images(d) for d in dirs):
        return read_class_folders(path, None)
    what = f"{len(images)} loose image(s) but no class folders" if images else "nothing usable"
    raise CnnlabError(f"no recognisable dataset layout ({what}); {LAYOUTS_ACCEPTED}", path)


def _has_images(folder: Path) -> bool:
    return any(is_image_file(f) for f in folder.iterdir() if f.is_file())


def read_mnist_folder(folder: Path) -> Source:
    """The four IDX files: first 60000 train, last 10000 test, in file order."""
    images, labels, n_train = mnist.read_mnist(folder)
    n = len(images)
    k = max(10, int(labels.max()) + 1) if n else 10
    return Source(
        layout="mnist",
        root=folder,
        class_names=[str(i) for i in range(k)],
        files=[f"{mnist.MNIST_FILES['train_images']}[{i}]" for i in range(n_train)]
        + [f"{mnist.MNIST_FILES['test_images']}[{i}]" for i in range(n - n_train)],
        labels=labels.astype(np.int64).tolist(),
        arrays=images,
        splits={"train": list(range(n_train)), "test": list(range(n_train, n))},
        content_files=list(mnist.find_mnist_files(folder).values()),  # type: ignore[union-attr]
    )


def read_neu_cls(folder: Path, images: list[Path]) -> Source:
    """NEU-CLS as distributed: `Cr_1.bmp` ... `Sc_300.bmp` in one folder."""
    return _numbered_source("neu-cls", folder, images, None)


def read_neu_det(folder: Path, image_dir: Path, ann_dir: Path) -> Source:
    """NEU-DET: `IMAGES/<class>_<n>.jpg` with Pascal VOC boxes in `ANNOTATIONS/<stem>.xml`."""
    _, files = _children(image_dir)
    images = [f for f in files if is_image_file(f)]
    if not images:
        raise CnnlabError("NEU-DET IMAGES folder has no images", image_dir)
    return _numbered_source("neu-det", folder, images, ann_dir)


def _numbered_source(layout: str, root: Path, images: list[Path], ann_dir: Path | None) -> Source:
    images = sorted(images, key=lambda p: _natural_key(p.name))
    names = [neu.class_from_numbered_stem(p.stem, p) for p in images]
    classes = [c for c in neu.NEU_CLASSES if c in set(names)]
    src = Source(
        layout=layout,
        root=root,
        class_names=classes,
        files=[p.relative_to(root).as_posix() for p in images],
        labels=[classes.index(c) for c in names],
        paths=images,
        content_files=list(images),
    )
    if ann_dir is not None:
        missing = 0
        for i, p in enumerate(images):
            xml = ann_dir / f"{p.stem}.xml"
            if xml.is_file():
                src.boxes[i] = neu.read_voc_boxes(xml)
                src.content_files.append(xml)
            else:
                missing += 1
        if missing:
            src.notes.append(f"{missing} image(s) have no annotation file in {ann_dir.name}/")
    return src


def _natural_key(name: str) -> list[object]:
    """Sort `crazing_2` before `crazing_10`."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_class_folders(root: Path, split_dirs: list[Path] | None) -> Source:
    """One folder per class, optionally under split folders (train/, val/ or valid/, test/).

    Class names are the folder names (sorted); when every folder name is a NEU class in some
    spelling (Crazing, Pitted, Rolled, ...), the canonical NEU names and order are used.
    Files without an image suffix (and hidden files) are ignored, with a note.
    """
    groups: list[tuple[str | None, Path]] = []  # (split, class folder)
    if split_dirs is None:
        groups = [(None, d) for d in _children(root)[0]]
    else:
        for sd in split_dirs:
            split = SPLIT_FOLDERS[sd.name.lower()]
            class_dirs = _children(sd)[0]
            if not class_dirs:
                raise CnnlabError("split folder has no class folders", sd)
            groups += [(split, d) for d in class_dirs]
    raw_names = sorted({d.name for _, d in groups})
    mapped = {n: neu.neu_class_name(n) for n in raw_names}
    is_neu = all(mapped.values()) and len(set(mapped.values())) == len(raw_names)
    if is_neu:
        present = set(mapped.values())
        classes = [c for c in neu.NEU_CLASSES if c in present]
        canon = {n: mapped[n] for n in raw_names}
    else:
        classes = raw_names
        canon = {n: n for n in raw_names}
    src = Source(
        layout=("neu-" if is_neu else "") + ("folders-split" if split_dirs else "folders"),
        root=root,
        class_names=classes,
        files=[],
        labels=[],
    )
    ignored = 0
    for split, d in groups:
        _, files = _children(d)
        imgs = sorted((f for f in files if is_image_file(f)), key=lambda p: _natural_key(p.name))
        ignored += len(files) - len(imgs)
        if not imgs:
            raise CnnlabError("class folder has no images", d)
        label = classes.index(canon[d.name])
        for f in imgs:
            if split is not None:
                src.splits.setdefault(split, []).append(len(src.files))
            src.files.append(f.relative_to(root).as_posix())
            src.labels.append(label)
            src.paths.append(f)
    src.content_files = list(src.paths)
    if ignored:
        src.notes.append(f"ignored {ignored} file(s) without an image suffix")
    return src


_NPY_PAIR = re.compile(r"^(?P<prefix>.*?)(?P<kind>imgs|images|x|labels|y)$", re.IGNORECASE)


def read_npy_pair(folder: Path, only: Path | None = None) -> Source:
    """Pairs of images/labels .npy files (`<prefix>imgs|images|x` + `<prefix>labels|y`).

    A prefix naming a split (`NEU_train_`, `test_`) makes that split. Images: (N, H, W),
    (N, H, W, 1|3) or (N, 1|3, H, W); uint8 as is; float in 0..1 scaled by 255, float in
    0..255 rounded (values outside are an error); 16-bit integers scaled by 1/257.
    Labels: integers (N,) or one-hot (N, K). Files named `NEU_*` use the lecture's class
    order [scratches, rolled-in scale, pitted surface, patches, inclusion, crazing] and are
    renumbered to the canonical NEU order; otherwise classes are "0".."K-1", or the lines
    of a `classes.txt` beside the files.
    """
    pairs: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.glob("*.npy")):
        m = _NPY_PAIR.match(f.stem)
        if m is None:
            continue
        kind = "labels" if m["kind"].lower() in ("labels", "y") else "images"
        pairs.setdefault(m["prefix"], {})[kind] = f
    if only is not None:
        m = _NPY_PAIR.match(only.stem)
        if m is None or m["kind"].lower() in ("labels", "y"):
            raise CnnlabError("expected an images .npy file named like *imgs.npy or *images.npy",
                              only)  # fmt: skip
        pairs = {m["prefix"]: pairs.get(m["prefix"], {})}
    for prefix, pair in pairs.items():
        if "images" in pair and "labels" not in pair:
            raise CnnlabError(f"no labels file beside it (expected {prefix}labels.npy)",
                              pair["images"])  # fmt: skip
    pairs = {p: v for p, v in pairs.items() if len(v) == 2}
    if not pairs:
        raise CnnlabError(f"no images/labels .npy pair found; {LAYOUTS_ACCEPTED}", only or folder)
    lecture = all(p.lower().startswith("neu") for p in pairs)
    class_file = folder / "classes.txt"
    names = None
    if lecture:
        names = list(neu.LECTURE_ORDER)
    elif class_file.is_file():
        names = [s.strip() for s in class_file.read_text().splitlines() if s.strip()]
    arrays, labels, files, splits = [], [], [], {}
    for prefix, pair in sorted(pairs.items()):
        imgs = _npy_images(pair["images"])
        labs = _npy_labels(pair["labels"], len(names) if names else None)
        if len(imgs) != len(labs):
            raise CnnlabError(
                f"{len(imgs)} images but {len(labs)} labels in {pair['labels'].name}",
                pair["images"],
            )
        if arrays and imgs.shape[1:] != arrays[0].shape[1:]:
            raise CnnlabError(
                f"image shape {imgs.shape[1:]} differs from {arrays[0].shape[1:]} in the other "
                "files",
                pair["images"],
            )
        split = next(
            (SPLIT_FOLDERS[t] for t in re.split(r"[^a-z]+", prefix.lower()) if t in SPLIT_FOLDERS),
            None,
        )
        if split is not None:
            splits.setdefault(split, []).extend(range(len(files), len(files) + len(imgs)))
        files += [f"{pair['images'].name}[{i}]" for i in range(len(imgs))]
        arrays.append(imgs)
        labels.append(labs)
    lab = np.concatenate(labels)
    if names is None:
        names = [str(i) for i in range(int(lab.max()) + 1 if len(lab) else 0)]
    notes = []
    if lecture:
        remap = np.array([neu.NEU_CLASSES.index(n) for n in neu.LECTURE_ORDER])
        lab = remap[lab]
        names = list(neu.NEU_CLASSES)
        notes.append("labels renumbered from the lecture's order to " + ", ".join(names))
    if splits and sum(len(v) for v in splits.values()) != len(files):
        raise CnnlabError("some .npy pairs name a split (train/test/val) and others do not",
                          folder)  # fmt: skip
    return Source(
        layout="npy",
        root=folder,
        class_names=names,
        files=files,
        labels=lab.astype(np.int64).tolist(),
        arrays=np.concatenate(arrays),
        splits=splits,
        notes=notes,
        content_files=[p for pair in pairs.values() for p in pair.values()]
        + ([class_file] if names and class_file.is_file() and not lecture else []),
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        msg = f"not a plain .npy array (pickled objects are refused: {e})"
        raise CnnlabError(msg, path) from None
    except (OSError, EOFError) as e:
        raise CnnlabError(f"unreadable or truncated .npy file ({e})", path) from None


def _npy_images(path: Path) -> np.ndarray:
    """Images as uint8 (N, H, W) or (N, H, W, C); see `read_npy_pair` for accepted forms."""
    a = _load_npy(path)
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[3] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[3] in (3, 4))):
        raise CnnlabError(f"images must be (N,H,W) or (N,H,W,C), got shape {a.shape}", path)
    if a.dtype == np.uint8:
        return a
    if a.dtype in (np.uint16, np.int32, np.int64, np.int16) and a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise CnnlabError("integer images must lie in 0..65535", path)
        if a.size and a.max() > 255:
            return np.round(a / 257.0).astype(np.uint8)
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise CnnlabError("images contain NaN or infinity", path)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise CnnlabError(f"float images must lie in 0..1 or 0..255, found {lo}..{hi}", path)
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    raise CnnlabError(f"unsupported image dtype {a.dtype}", path)


def _npy_labels(path: Path, k: int | None) -> np.ndarray:
    """Integer labels (N,), from integers, integral floats or one-hot rows."""
    a = _load_npy(path)
    if a.ndim == 2 and a.shape[1] > 1:
        if not np.isin(a, (0, 1)).all() or not (a.sum(axis=1) == 1).all():
            raise CnnlabError("2-D labels must be one-hot rows", path)
        a = a.argmax(axis=1)
    a = a.reshape(-1) if a.ndim == 2 else a
    if a.ndim != 1:
        raise CnnlabError(f"labels must be (N,) or one-hot (N,K), got shape {a.shape}", path)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise CnnlabError(f"labels must be integers, got {a.dtype}", path)
    if np.issubdtype(a.dtype, np.floating) and not (a == np.round(a)).all():
        raise CnnlabError("labels must be whole numbers", path)
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise CnnlabError(f"label {int(a.min())} out of range (labels start at 0)", path)
    if k is not None and a.size and a.max() >= k:
        raise CnnlabError(f"label {int(a.max())} out of range (0..{k - 1})", path)
    return a


def most_common(values: list[tuple[int, int]]) -> tuple[int, int]:
    """The most common (H, W); ties go to the larger area (then the first seen)."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v[0] * v[1]))
