"""Small helpers shared by the CLI modules: JSON output, subcommand creation."""

from __future__ import annotations

import argparse
import json
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
