"""The kernel bank: the notes' kernels and the classic ones, by name, plus user kernels.

A kernel spec is one of
  * a name from the bank, optionally with parameters: ``box:7``, ``gaussian:9:2.0``,
    ``laplacian:8`` (see `list_kernels`);
  * a file: ``.npy`` (loaded without pickle), ``.txt`` / ``.csv`` (one row per line, values
    separated by commas or spaces);
  * inline numbers: rows separated by ``;``, values by ``,`` or spaces: ``"1,0,-1;1,0,-1;1,0,-1"``.

All kernels are used as true convolutions (flipped, scipy.signal.convolve2d semantics), as in
the notes. With that convention ``sobel-x`` / ``prewitt-x`` are positive where brightness
increases to the right and ``sobel-y`` / ``prewitt-y`` where it increases downwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

KERNEL_FILE_SUFFIXES = (".npy", ".txt", ".csv")
MAX_KERNEL_SIZE = 101  # a named kernel wider than this is a typo, not a filter

# The notes' matrices, exactly as printed there.
EDGE_HORIZONTAL = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64)  # "Mh"
EDGE_VERTICAL = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float64)  # "Mv"
SHARPEN = np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], dtype=np.float64)
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
PREWITT_X = EDGE_HORIZONTAL.copy()  # the notes' Mh is the Prewitt x kernel
EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
IDENTITY = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)
LAPLACIAN_4 = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
LAPLACIAN_8 = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Kernel:
    """A resolved kernel: its display name, its weights (float64, 2-D) and what it does."""

    name: str
    weights: np.ndarray
    description: str = ""


@dataclass(frozen=True)
class BankEntry:
    """A named kernel (or operation) in the bank: how to spell it and how to build it."""

    name: str
    usage: str  # e.g. "box[:N]"
    description: str
    build: Callable[..., np.ndarray] | None  # None for operations (sobel-magnitude)
    defaults: tuple = ()


def box(n: int = 5) -> np.ndarray:
    """n x n mean filter (the notes' blur is n = 5: np.ones([5, 5]) / 25)."""
    n = _size(n, "box")
    return np.full((n, n), 1.0 / (n * n))


def gaussian(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """size x size Gaussian exp(-r^2 / (2 sigma^2)) centred on the middle, normalised to sum 1."""
    size = _size(size, "gaussian")
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise CnnlabError(f"gaussian sigma must be a positive number, got {sigma}")
    d = np.arange(size) - (size - 1) / 2
    g = np.exp(-(d**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def laplacian(neighbours: int = 4) -> np.ndarray:
    """Discrete Laplacian: 4-neighbour [[0,1,0],[1,-4,1],[0,1,0]] or 8-neighbour (-8 centre)."""
    if neighbours == 4:  # 4.0 counts, 4.5 does not
        return LAPLACIAN_4.copy()
    if neighbours == 8:
        return LAPLACIAN_8.copy()
    raise CnnlabError(f"laplacian takes 4 or 8 neighbours, got {neighbours}")


BANK: dict[str, BankEntry] = {
    e.name: e
    for e in [
        BankEntry(
            "edge-horizontal",
            "edge-horizontal",
            "the notes' 'horizontal edge detector' Mh=[[1,0,-1]]*3; it differences left/right "
            "neighbours, so it actually responds to vertical edges (the notes' name is kept)",
            lambda: EDGE_HORIZONTAL.copy(),
        ),
        BankEntry(
            "edge-vertical",
            "edge-vertical",
            "the notes' 'vertical edge detector' Mv=[[1,1,1],[0,0,0],[-1,-1,-1]]; it "
            "differences rows above/below, so it responds to horizontal edges (the notes' name)",
            lambda: EDGE_VERTICAL.copy(),
        ),
        BankEntry("box", "box[:N]", "N x N mean blur, default 5 (the notes' 5x5 blur)", box, (5,)),
        BankEntry(
            "gaussian",
            "gaussian[:N[:SIGMA]]",
            "N x N Gaussian blur with standard deviation SIGMA pixels, default 5:1.0",
            gaussian,
            (5, 1.0),
        ),
        BankEntry(
            "sharpen",
            "sharpen",
            "the notes' sharpening kernel [[-1,-1,-1],[-1,9,-1],[-1,-1,-1]]",
            lambda: SHARPEN.copy(),
        ),
        BankEntry(
            "sobel-x",
            "sobel-x",
            "Sobel d/dx: positive where brightness increases to the right",
            lambda: SOBEL_X.copy(),
        ),
        BankEntry(
            "sobel-y",
            "sobel-y",
            "Sobel d/dy: positive where brightness increases downwards",
            lambda: SOBEL_X.T.copy(),
        ),
        BankEntry(
            "prewitt-x",
            "prewitt-x",
            "Prewitt d/dx (equal to the notes' Mh): positive where brightness increases rightwards",
            lambda: PREWITT_X.copy(),
        ),
        BankEntry(
            "prewitt-y",
            "prewitt-y",
            "Prewitt d/dy (equal to the notes' Mv): positive where brightness increases downwards",
            lambda: PREWITT_X.T.copy(),
        ),
        BankEntry(
            "laplacian",
            "laplacian[:4|8]",
            "discrete Laplacian (second derivative), 4- or 8-neighbour, default 4",
            laplacian,
            (4,),
        ),
        BankEntry(
            "emboss",
            "emboss",
            "emboss [[-2,-1,0],[-1,1,1],[0,1,2]]: relief shading",
            lambda: EMBOSS.copy(),
        ),
        BankEntry(
            "identity",
            "identity",
            "3x3 identity: returns the image unchanged",
            lambda: IDENTITY.copy(),
        ),
        BankEntry(
            "sobel-magnitude",
            "sobel-magnitude",
            "operation, not a kernel: gradient magnitude sqrt(sobel_x^2 + sobel_y^2)",
            None,
        ),
    ]
}

OPERATIONS = ("sobel-magnitude",)


def list_kernels() -> list[dict]:
    """The bank as plain dicts (name, usage, description, kind, default weights)."""
    rows = []
    for e in BANK.values():
        weights = None if e.build is None else e.build(*e.defaults)
        rows.append(
            {
                "name": e.name,
                "usage": e.usage,
                "kind": "operation" if e.build is None else "kernel",
                "shape": None if weights is None else list(weights.shape),
                "description": e.description,
                "weights": None if weights is None else weights.tolist(),
            }
        )
    return rows


def get_kernel(spec, what: str = "kernel") -> Kernel:
    """Resolve a kernel spec (bank name with parameters, file, inline text or array) to a Kernel.

    Examples
    --------
    >>> get_kernel("box:3").weights.sum().round(12)
    np.float64(1.0)
    >>> get_kernel("1,0,-1;2,0,-2;1,0,-1").weights.shape
    (3, 3)
    """
    if not isinstance(spec, str):
        return Kernel("custom", check_kernel(np.asarray(spec), what, what=what), "user kernel")
    spec = spec.strip()
    name, _, params = spec.partition(":")
    if name in BANK:
        entry = BANK[name]
        if entry.build is None:
            raise CnnlabError(f"{name!r} is an operation, not a kernel; use it with `filter`")
        args = _parse_params(spec, params, len(entry.defaults))
        weights = entry.build(*args) if args else entry.build(*entry.defaults)
        return Kernel(spec, check_kernel(weights, spec), entry.description)
    path = Path(spec)
    if path.suffix.lower() in KERNEL_FILE_SUFFIXES or path.is_file():
        return Kernel(path.stem, load_kernel_file(path, what), f"{what} from {path}")
    if any(ch.isdigit() for ch in spec):
        return Kernel("custom", parse_kernel_text(spec, source=None, what=what), "inline kernel")
    raise CnnlabError(f"unknown {what} {spec!r} (see `cnnlab kernels` for the names)")


def parse_kernel_text(
    text: str, source: str | Path | None = None, what: str = "kernel"
) -> np.ndarray:
    """Numbers as rows (";" or new lines) of values ("," or spaces) -> a float64 1-D/2-D array.

    One row gives a 1-D array. Ragged rows, non-numbers, NaN/inf and empty text are errors
    naming `source` (the file) or quoting the text.
    """
    where = source
    label = "" if source is not None else f"{what} {text!r}: "
    rows = []
    lines = [ln.split("#", 1)[0] for ln in text.replace(";", "\n").splitlines()]
    for line in lines:
        cells = line.replace(",", " ").split()
        if not cells:
            continue
        row = []
        for cell in cells:
            try:
                row.append(float(cell))
            except ValueError:
                raise CnnlabError(f"{label}entry {cell!r} is not a number", where) from None
        rows.append(row)
    if not rows:
        raise CnnlabError(f"{label}no numbers found (empty {what})", where)
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise CnnlabError(f"{label}rows have different lengths {sorted(widths)}", where)
    arr = np.array(rows, dtype=np.float64)
    arr = arr[0] if len(rows) == 1 else arr
    return check_kernel(
        arr, source if source is not None else f"{what} {text!r}", source is not None, what
    )


def load_kernel_file(path: str | Path, what: str = "kernel") -> np.ndarray:
    """Read a kernel from .npy (no pickle), .txt or .csv; every problem names the file."""
    path = Path(path)
    if not path.exists():
        raise CnnlabError(f"no such {what} file", path)
    if path.is_dir():
        raise CnnlabError(f"is a folder, expected a {what} file (.npy, .txt, .csv)", path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CnnlabError(f"not a readable .npy array ({e})", path) from None
        if arr.dtype.kind not in "biuf":
            raise CnnlabError(f"{what} dtype {arr.dtype} is not real numbers", path)
        return check_kernel(arr.astype(np.float64), path, True, what)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CnnlabError(f"cannot read {what} text ({e})", path) from None
    return parse_kernel_text(text, source=path, what=what)


def check_kernel(
    arr: np.ndarray, source, in_file: bool = False, what: str = "kernel"
) -> np.ndarray:
    """Refuse empty, non-numeric, non-finite or more-than-2-D arrays; return float64.

    `what` names the array in messages ("kernel", or "signal" for `cnnlab convolve`).
    """
    where, label = (source, "") if in_file else (None, f"{source}: ")
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise CnnlabError(f"{label}{what} is not real numbers (dtype {arr.dtype})", where)
    if arr.size == 0:
        raise CnnlabError(f"{label}{what} is empty", where)
    if arr.ndim > 2 or arr.ndim == 0:
        raise CnnlabError(f"{label}{what} has {arr.ndim} dimensions; a filter needs 1 or 2", where)
    if not np.isfinite(arr).all():
        raise CnnlabError(f"{label}{what} has NaN or infinite entries", where)
    return arr.astype(np.float64)


def _parse_params(spec: str, params: str, n_max: int) -> list:
    if not params:
        return []
    parts = params.split(":")
    if len(parts) > n_max:
        raise CnnlabError(f"kernel {spec!r} takes at most {n_max} parameter(s)")
    out = []
    for p in parts:
        try:
            out.append(int(p) if p.lstrip("-").isdigit() else float(p))
        except ValueError:
            raise CnnlabError(f"kernel {spec!r}: parameter {p!r} is not a number") from None
    return out


def _size(n, what: str) -> int:
    if isinstance(n, float) and not n.is_integer():
        raise CnnlabError(f"{what} size must be a whole number, got {n}")
    n = int(n)
    if not 1 <= n <= MAX_KERNEL_SIZE:
        raise CnnlabError(f"{what} size must be between 1 and {MAX_KERNEL_SIZE}, got {n}")
    return n
