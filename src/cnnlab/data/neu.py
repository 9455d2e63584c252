"""NEU surface defects: one spelling of the six class names, NEU-CLS and NEU-DET file layouts.

Kechen Song's NEU database ships as NEU-CLS (`Cr_1.bmp`, `PS_12.bmp`, ... in one folder) and
NEU-DET (`IMAGES/crazing_1.jpg` with Pascal VOC boxes in `ANNOTATIONS/crazing_1.xml`);
copies rename the classes (Kaggle: Crazing, Pitted, Rolled, ...). All map to `NEU_CLASSES`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cnnlab.data.dataset import Box
from cnnlab.errors import CnnlabError

# The canonical order (alphabetical, as NEU-DET's file names sort).
NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]

# The lecture's NumPy arrays number the classes in this order (label i -> name).
LECTURE_ORDER = [
    "scratches", "rolled-in_scale", "pitted_surface", "patches", "inclusion", "crazing"
]  # fmt: skip

NEU_SOURCE = (
    "the NEU surface defect database is published on Kechen Song's page "
    "http://faculty.neu.edu.cn/songkechen/zh_CN/zdylm/263270/list/index.htm and on Kaggle as "
    "'NEU Metal Surface Defects Data'"
)

# Every spelling seen in the wild, lower-cased with separators removed -> canonical name.
_ALIASES = {
    "crazing": "crazing",
    "cr": "crazing",
    "inclusion": "inclusion",
    "in": "inclusion",
    "patches": "patches",
    "patch": "patches",
    "pa": "patches",
    "pittedsurface": "pitted_surface",
    "pitted": "pitted_surface",
    "ps": "pitted_surface",
    "rolledinscale": "rolled-in_scale",
    "rolledin": "rolled-in_scale",
    "rolled": "rolled-in_scale",
    "rs": "rolled-in_scale",
    "scratches": "scratches",
    "scratch": "scratches",
    "sc": "scratches",
}

_NEU_CLS_NAME = re.compile(r"^(Cr|In|Pa|PS|RS|Sc)_\d+$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(.+?)_(\d+)$")


def neu_class_name(name: str) -> str | None:
    """The canonical NEU class for any spelling ("Rolled", "rolled-in scale", "RS"), else None.

    >>> neu_class_name("Pitted"), neu_class_name("rolled-in_scale"), neu_class_name("cat")
    ('pitted_surface', 'rolled-in_scale', None)
    """
    return _ALIASES.get(re.sub(r"[^a-z]", "", name.lower()))


def is_neu_cls_name(stem: str) -> bool:
    """True for NEU-CLS file stems such as `Cr_1` or `PS_300`."""
    return _NEU_CLS_NAME.match(stem) is not None


def class_from_numbered_stem(stem: str, path: Path) -> str:
    """NEU class of a file named `<class>_<number>` (`rolled-in_scale_12`, `Cr_3`)."""
    m = _NUMBERED.match(stem)
    name = neu_class_name(m.group(1)) if m else None
    if name is None:
        raise CnnlabError(
            "file name does not start with a NEU class (expected e.g. crazing_1 or Cr_1)", path
        )
    return name


def read_voc_boxes(path: str | Path) -> list[Box]:
    """The (xmin, ymin, xmax, ymax) boxes of a Pascal VOC annotation file.

    Files declaring a DTD or entities are refused: the standard-library parser expands
    entities, so refusing them closes the entity-expansion ("billion laughs") attack without
    an extra dependency (VOC files never need a DTD).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CnnlabError(f"cannot read annotation ({e.strerror})", path) from None
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise CnnlabError("annotation declares a DTD or entities; refused", path)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise CnnlabError(f"malformed XML annotation ({e})", path) from None
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            box = tuple(round(float(bb.findtext(k, ""))) for k in _BOX_KEYS)
        except ValueError:
            msg = "bounding box with a missing or non-numeric coordinate"
            raise CnnlabError(msg, path) from None
        boxes.append(box)
    return boxes  # type: ignore[return-value]


_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
