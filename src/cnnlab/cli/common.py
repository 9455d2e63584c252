"""Small helpers shared by the CLI modules: JSON output, subcommand creation."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, examples: str = "", **kwargs: Any
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with an `examples:` block."""
    from cnnlab.cli import HelpFormatter

    epilog = f"examples:\n{examples}" if examples else None
    return sub.add_parser(
        name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for image sizes: `28` or `28x32` (H x W) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size wants H or HxW, got '{text}'") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"size wants positive H or HxW, got '{text}'")
    return vals[0], vals[1]


_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """argparse type for durations: `600`, `600s`, `10m`, `1.5h` -> seconds; `0` = no limit."""
    t = text.strip().lower()
    unit = _SECONDS.get(t[-1:], None)
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"duration wants seconds or a number with s, m or h (600, 10m), got '{text}'"
        ) from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"duration must be >= 0, got '{text}'")
    return value


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (machine-readable output for --json)."""
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
