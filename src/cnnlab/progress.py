"""The one progress bar: tqdm on stderr, shown only when asked for and stderr is a terminal.

Logs, pipes and CI output stay clean; every long loop in cnnlab goes through `progress_bar`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    enabled: bool = True,
    total: int | None = None,
    unit: str = "img",
    leave: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over `iterable` (or a manual one of `total`); silent off a terminal."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        dynamic_ncols=True,
        **kwargs,
    )
