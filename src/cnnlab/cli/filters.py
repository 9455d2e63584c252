"""`cnnlab filter`, `cnnlab kernels`, `cnnlab convolve`: thin calls into cnnlab.filters/.signal."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_command, print_json

MAX_STEPS = 400  # a step table longer than this is not something anyone reads


def register(sub: argparse._SubParsersAction) -> None:
    """Add the filter, kernels and convolve subcommands."""
    p = add_command(
        sub,
        "filter",
        "convolve an image with named or user kernels and write the results",
        "  cnnlab filter photo.png --kernel sobel-x --kernel sharpen -o out/\n"
        "  cnnlab filter --sample --kernel edge-horizontal --kernel box:5 --gallery gallery.png\n"
        "  cnnlab filter scan.tif --kernel gaussian:9:2.0 -o blurred.tif --scale none --raw\n"
        '  cnnlab filter photo.png --kernel "1,0,-1;2,0,-2;1,0,-1" --mode valid -o edges.png\n',
    )
    p.add_argument("image", nargs="?", help="image file (PNG, JPEG, BMP, TIFF; 8/16-bit, gray/RGB)")
    p.add_argument("--sample", action="store_true", help="use the generated sample image instead")
    p.add_argument(
        "-k",
        "--kernel",
        action="append",
        required=True,
        metavar="SPEC",
        help="bank name (see `cnnlab kernels`), .npy/.txt/.csv file, or inline '1,0,-1;...'; "
        "repeatable",
    )
    p.add_argument(
        "-o",
        "--out",
        default=".",
        help="output image (one kernel), name pattern OUT_<kernel>.png, or folder (default: .)",
    )
    p.add_argument(
        "--mode",
        choices=("same", "valid", "full"),
        default="same",
        help="output size: same as input (default), valid (no border), full",
    )
    p.add_argument(
        "--boundary",
        choices=("reflect", "fill", "wrap"),
        default="reflect",
        help="outside the image for same/full: reflect (edge repeated, default), "
        "fill (zeros), wrap",
    )
    p.add_argument(
        "--scale",
        choices=("clip", "minmax", "abs", "none"),
        default="clip",
        help="display scaling: clip (negatives to 0, max to white; the notes'), "
        "minmax, abs, none (values as intensities)",
    )
    p.add_argument("--raw", action="store_true", help="also save the float result as .npy")
    p.add_argument(
        "--gallery", metavar="OUT.png", help="write a figure: original beside each result"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_filter)

    p = add_command(
        sub,
        "kernels",
        "list the named kernels (or print the weights of the given specs)",
        "  cnnlab kernels\n  cnnlab kernels --json\n  cnnlab kernels sobel-x gaussian:5:1.0\n",
    )
    p.add_argument("specs", nargs="*", metavar="SPEC", help="kernel specs to print as matrices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_kernels)

    p = add_command(
        sub,
        "convolve",
        "convolve (or correlate) a small 1-D/2-D signal with a kernel, optionally step by step",
        "  cnnlab convolve --signal 1,3,2,3,0,1,5,4 --kernel 1,3,0,-1 --steps\n"
        '  cnnlab convolve --signal "3,0,1,2,7;1,5,8,9,3;2,7,2,5,1;0,1,3,1,7;4,2,1,6,2" '
        '--kernel "1,0,-1;1,0,-1;1,0,-1" --steps\n'
        "  cnnlab convolve --signal image.txt --kernel=-1,2,-1 --mode same --correlate --json\n",
    )
    p.add_argument(
        "--signal", required=True, help="inline numbers ('1,2,3' or '1,2;3,4') or a file"
    )
    p.add_argument(
        "--kernel",
        required=True,
        help="inline numbers, a file or a bank name (write --kernel=-1,0,1 for a leading minus)",
    )
    p.add_argument(
        "--mode",
        choices=("valid", "same", "full"),
        default="valid",
        help="output size (default valid, as in the notes' walk)",
    )
    p.add_argument("--correlate", action="store_true", help="cross-correlation: do not flip")
    p.add_argument("--steps", action="store_true", help="print the step-by-step table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_convolve)


def _filter(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.filters import filter_file
    from cnnlab.runtime import setup_threads

    setup_threads()  # the direct path runs on torch: use the physical cores
    if args.sample == (args.image is not None):
        raise CnnlabError("give either an IMAGE or --sample (exactly one)")
    summary = filter_file(
        None if args.sample else args.image,
        args.kernel,
        out=args.out,
        mode=args.mode,
        boundary=args.boundary,
        scaling=args.scale,
        raw=args.raw,
        gallery=args.gallery,
        progress=not args.quiet,
    )
    if args.json:
        print_json(summary)
        return 0
    for r in summary["results"]:
        print(f"{r['kernel']}: {', '.join(r['outputs'])}  (range {r['min']:.4g} .. {r['max']:.4g})")
    if "gallery" in summary:
        print(f"gallery: {summary['gallery']}")
    return 0


def _kernels(args: argparse.Namespace) -> int:
    from cnnlab.filters import get_kernel, list_kernels

    if args.specs:
        kernels = [get_kernel(s) for s in args.specs]
        if args.json:
            print_json([{"name": k.name, "weights": k.weights.tolist()} for k in kernels])
            return 0
        for k in kernels:
            print(f"{k.name} {'x'.join(map(str, k.weights.shape))}: {k.description}")
            print(_matrix_text(k.weights))
        return 0
    rows = list_kernels()
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["usage"]) for r in rows)
    for r in rows:
        print(f"{r['usage'].ljust(width)}  {r['description']}")
    return 0


def _convolve(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnlab.errors import CnnlabError
    from cnnlab.filters import get_kernel
    from cnnlab.signal import convolve, correlate, explain_convolution, format_steps

    signal = get_kernel(args.signal, what="signal").weights
    kernel = get_kernel(args.kernel).weights
    if kernel.ndim > signal.ndim:
        raise CnnlabError(
            f"kernel has {kernel.ndim} dimensions, more than the signal's {signal.ndim}"
        )
    if np.all(signal == np.round(signal)) and np.all(kernel == np.round(kernel)):
        signal, kernel = signal.astype(np.int64), kernel.astype(np.int64)  # exact integer output
    op = correlate if args.correlate else convolve
    result = op(signal, kernel, args.mode)
    steps = None
    if args.steps:
        steps = explain_convolution(signal, kernel, args.mode, flip=not args.correlate)
        if len(steps) > MAX_STEPS:
            raise CnnlabError(f"{len(steps)} steps is too many to print (limit {MAX_STEPS})")
    if args.json:
        obj = {
            "operation": "correlate" if args.correlate else "convolve",
            "mode": args.mode,
            "signal": signal.tolist(),
            "kernel": kernel.tolist(),
            "result": result.tolist(),
        }
        if steps is not None:
            obj["steps"] = [
                {
                    "position": list(s.position),
                    "window": s.window.tolist(),
                    "kernel": s.kernel.tolist(),
                    "products": s.products.tolist(),
                    "sum": s.total,
                }
                for s in steps
            ]
        print_json(obj)
        return 0
    if steps is not None:
        print(format_steps(steps))
        print()
    print(f"{'correlation' if args.correlate else 'convolution'} ({args.mode}):")
    print(_matrix_text(result))
    return 0


def _matrix_text(a) -> str:
    import numpy as np

    a = np.atleast_2d(a)
    cells = [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.tolist()] for row in a]
    width = max(len(c) for row in cells for c in row)
    return "\n".join("  " + " ".join(c.rjust(width) for c in row) for row in cells)
