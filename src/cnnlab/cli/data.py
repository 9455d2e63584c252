"""`cnnlab data info` and `cnnlab data show`: thin calls into `cnnlab.data`."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli.common import add_command, parse_size, print_json


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="'mnist', 'neu', or a dataset folder / .npy file")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument("--size", type=parse_size, help="resize to H or HxW pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    p.add_argument("--test-split", type=float, default=0.2,
                   help="test fraction when the data has no test split (default 0.2)")  # fmt: skip
    p.add_argument("--val-split", type=float, default=0.0,
                   help="fraction of train held out as validation (default 0)")  # fmt: skip
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning instead of failing")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="decode again, ignore the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `data info` and `data show`."""
    data = add_command(
        sub,
        "data",
        "inspect datasets: layout, classes, splits, sample grids",
        "  cnnlab data info neu\n  cnnlab data show mnist -o mnist-grid.png\n",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    info = add_command(
        dsub,
        "info",
        "layout detected, classes with counts per split, image size and mode, problems found",
        "  cnnlab data info neu\n"
        "  cnnlab data info mnist --json\n"
        "  cnnlab data info ./my_defects --val-split 0.1\n",
    )
    _add_load_options(info)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    show = add_command(
        dsub,
        "show",
        "save a grid of sample images per class",
        "  cnnlab data show neu -o neu-grid.png\n"
        "  cnnlab data show mnist -o digits.png --per-class 10 --split test\n",
    )
    _add_load_options(show)
    show.add_argument("-o", "--out", required=True, help="output image (.png, .svg, .pdf)")
    show.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    show.add_argument("--split", default="all", help="train, val, test or all (default all)")
    show.set_defaults(func=_show)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cnnlab.data import load_dataset

    return load_dataset(
        args.data,
        channels=args.channels,
        size=args.size,
        seed=args.seed,
        test_split=args.test_split,
        val_split=args.val_split,
        cache=not args.no_cache,
        progress=not args.quiet,
        skip_bad=args.skip_bad,
    )


def _info(args: argparse.Namespace) -> int:
    from cnnlab.data.report import dataset_info, format_info

    info = dataset_info(_load(args))
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0


def _show(args: argparse.Namespace) -> int:
    from cnnlab.data.report import sample_grid
    from cnnlab.errors import CnnlabError

    if args.per_class < 1:
        raise CnnlabError("--per-class must be at least 1")
    path = sample_grid(_load(args), args.out, per_class=args.per_class, split=args.split)
    print(f"wrote {path}", file=sys.stderr)
    return 0
