"""`cnnlab demo`: the lecture end to end (filters gallery, train, evaluate, predict 1495)."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli.common import add_command, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = add_command(
        sub,
        "demo",
        "the lecture end to end: filter gallery, train seed-mnist on MNIST (3 epochs), "
        "evaluate on the 10000 test images, predict test image 1495 with the stem plot",
        "  cnnlab demo\n  cnnlab demo --out runs/demo --epochs 1\n",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--data",
        default="mnist",
        help="MNIST spec (default: mnist from $CNNLAB_DATA, downloaded when absent)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: the notes' 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from cnnlab.train.demo import run_demo

    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)

    summary = run_demo(
        args.out,
        data=args.data,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        progress=not quiet,
        log=log,
    )
    if args.json:
        print_json(summary)
        return 0
    print(f"MNIST test accuracy: {summary['test_accuracy']:.4f} on {summary['test_n']} images")
    print(
        f"test image {summary['image_index']}: predicted {summary['prediction']} "
        f"(true {summary['true_label']}, p={summary['probability']:.3f})"
    )
    for name, path in summary["plots"].items():
        print(f"{name}: {path}")
    return 0
