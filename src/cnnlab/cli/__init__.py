"""The `cnnlab` command: argument parsing and error reporting, nothing else.

Each module in this package adds its subcommands with `register(subparsers)` and calls
into the library from its handler; library imports happen inside handlers so that
`cnnlab --help` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from cnnlab import __version__
from cnnlab.cli import confidence, data, demo, deploy, explain, filters, train
from cnnlab.errors import CnnlabError
from cnnlab.switches import switched_off

MODULES = (demo, filters, data, train, confidence, explain, deploy)

EPILOG = """\
examples:
  cnnlab demo                                   train the lecture's MNIST CNN end to end
  cnnlab kernels                                list the named kernels
  cnnlab convolve --signal 1,3,2,3,0,1,5,4 --kernel 1,3,0,-1 --steps
  cnnlab filter photo.png --kernel sobel-x --kernel sharpen --gallery gallery.png
  cnnlab data info neu
  cnnlab train --data mnist --model seed-mnist --out runs/mnist
  cnnlab train --data neu --preset best --out runs/neu-best
  cnnlab train --resume runs/neu-best
  cnnlab evaluate runs/mnist --data mnist --json
  cnnlab predict runs/mnist digit.png --plot digit-probs.png
  cnnlab show kernels runs/neu -o kernels.png
  cnnlab explain runs/neu crazing_1.jpg -o cams/
  cnnlab report runs/neu -o report.html --data neu
  cnnlab calibrate runs/neu --data neu
  cnnlab adapt runs/neu-best new_light/ --out runs/neu-adapted   BatchNorm to new conditions
  cnnlab export runs/mnist -o mnist.onnx        ONNX, checked against PyTorch
  cnnlab serve runs/mnist --port 8000           HTTP API and a web page

Run `cnnlab COMMAND --help` for a command's options and examples.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-made layout of descriptions and example blocks."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="cnnlab: convolution, image filters and CNN classifiers (MNIST, NEU steel).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn user errors into one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def console() -> NoReturn:
    """The `cnnlab` console script: `main()`, then, with the output flushed, exit without the
    interpreter's teardown, which spends about 0.7 s of a `cnnlab train` run unloading torch
    on the 2-core box (README, "Benchmark"). Every file cnnlab writes is closed (and renamed
    into place) before `main` returns. A normal exit while another non-daemon thread runs,
    with `CNNLAB_FAST_EXIT=0`, and always for `python -m cnnlab` (profilers write at exit)."""
    rc = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if switched_off("CNNLAB_FAST_EXIT") or any(not t.daemon for t in others):
        sys.exit(rc)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that left (| head), a closed stream
            pass
    os._exit(rc)
