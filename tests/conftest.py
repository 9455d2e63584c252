"""Shared fixtures: the real-data root (or a visible skip) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own decoded-dataset cache, never the user's."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def real_data() -> Path:
    """`$CNNLAB_DATA` when it holds the real datasets; otherwise skip with the reason."""
    root = os.environ.get("CNNLAB_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real data not available: set CNNLAB_DATA to the folder with mnist/, neu-det/")
    return Path(root)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run `python -m cnnlab ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    """The `run_cli` helper as a fixture."""
    return run_cli
