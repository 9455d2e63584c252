"""Where cnnlab looks for data and keeps its cache (both overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Folder holding the real datasets: `$CNNLAB_DATA`, default `~/.cache/cnnlab/data`."""
    return Path(os.environ.get("CNNLAB_DATA") or Path.home() / ".cache" / "cnnlab" / "data")


def cache_root() -> Path:
    """Folder for decoded-dataset caches: `$CNNLAB_CACHE`, default `~/.cache/cnnlab/cache`."""
    return Path(os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab" / "cache")
