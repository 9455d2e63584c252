"""On / off switches from the environment, readable without importing torch (the CLI's exit
reads one after `cnnlab --help`, which must stay fast)."""

from __future__ import annotations

import os


def switched_off(name: str) -> bool:
    """True when the environment variable `name` is 0 / off / false / no: how cnnlab's
    optional kernels (CNNLAB_FUSED_POOL, CNNLAB_NCHW_WGRAD, ...) and the CLI's fast exit
    (CNNLAB_FAST_EXIT) are turned off."""
    return os.environ.get(name, "1").strip().lower() in {"0", "off", "false", "no"}
