"""Subcommands `show kernels|features`, `explain`, `report`: thin calls into cnnlab.explain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.cli.common import add_command, print_json
from cnnlab.errors import CnnlabError

DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("test", "val", "train", "all")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    show = add_command(
        sub,
        "show",
        "draw what a trained model learned (kernels) or computes (feature maps)",
        "  cnnlab show kernels runs/neu -o kernels.png\n"
        "  cnnlab show features runs/neu crazing_1.jpg -o features.png\n",
    )
    show_sub = show.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = add_command(
        show_sub,
        "kernels",
        "the learned first-layer kernels as images, on one shared scale",
        "  cnnlab show kernels runs/neu -o kernels.png\n"
        "  cnnlab show kernels runs/mnist/model.safetensors -o kernels.svg --json\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or .safetensors model")
    p.add_argument("-o", "--out", required=True, metavar="OUT.png", help="figure to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_show_kernels)

    p = add_command(
        show_sub,
        "features",
        "the feature maps after each conv block for one image (most active channels)",
        "  cnnlab show features runs/neu crazing_1.jpg -o features.png\n"
        "  cnnlab show features runs/mnist digit.png -o f.png --layer features.0.0 "
        "--per-block 32\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or .safetensors model")
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("-o", "--out", required=True, metavar="OUT.png", help="figure to write")
    p.add_argument(
        "--layer",
        action="append",
        metavar="NAME",
        help="record this module's output instead of the conv blocks (repeatable)",
    )
    p.add_argument("--per-block", type=int, help="maps drawn per block (default 16)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_show_features)

    p = add_command(
        sub,
        "explain",
        "Grad-CAM heatmaps over images; --score measures them against NEU-DET's boxes",
        "  cnnlab explain runs/neu crazing_1.jpg scratches_7.jpg -o cams/\n"
        "  cnnlab explain runs/neu samples/ -o cams/ --class patches\n"
        "  cnnlab explain runs/neu --data neu --score                 "
        "# pointing game, mass in boxes\n"
        "  cnnlab explain runs/neu --data neu --score --json -o out/  "
        "# writes out/localisation.json\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or .safetensors model")
    p.add_argument("inputs", metavar="IMAGE|FOLDER", nargs="*", help="image files or folders")
    p.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="where figures go (needed with images); with --score, where localisation.json "
        "goes (default RUN_DIR/explain-<split>/)",
    )
    p.add_argument("--class", dest="class_name", help="explain this class, not the predicted one")
    p.add_argument(
        "--layer", metavar="NAME", help="module to explain (default: the last conv block's output)"
    )
    p.add_argument("--alpha", type=float, default=0.45, help="heatmap opacity (default 0.45)")
    p.add_argument("--data", help="dataset with boxes for --score (neu or a NEU-DET folder)")
    p.add_argument("--score", action="store_true", help="score Grad-CAM against the boxes")
    p.add_argument(
        "--split", choices=SPLITS, default="test", help="images scored (default: held-out test)"
    )
    p.add_argument(
        "--use-predicted",
        action="store_true",
        help="score the predicted class's heatmap (default: the true class's)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="pointing game: a hit within this many pixels of a box (default 0)",
    )
    p.add_argument("--batch-size", type=int, help="images per Grad-CAM step (default 32)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)

    p = add_command(
        sub,
        "report",
        "one self-contained HTML report of a run (images embedded, viewable offline)",
        "  cnnlab report runs/neu -o report.html\n"
        "  cnnlab report runs/neu -o report.html --data neu   # + evaluation and Grad-CAMs\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or .safetensors model")
    p.add_argument("-o", "--out", required=True, metavar="OUT.html", help="report to write")
    p.add_argument("--data", help="evaluate on this dataset and add Grad-CAMs")
    p.add_argument("--split", choices=SPLITS, default="test", help="images evaluated")
    p.add_argument(
        "--gradcams", type=int, default=2, help="Grad-CAM examples per class (default 2)"
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_report)


def cmd_show_kernels(args: argparse.Namespace) -> int:
    from cnnlab.explain import show_kernels

    r = show_kernels(args.model, args.out)
    if args.json:
        print_json(r)
    else:
        shape = "x".join(str(s) for s in r["weight_shape"])
        print(f"{r['kernels']} kernels of {r['layer']} ({shape}): {r['file']}")
    return 0


def cmd_show_features(args: argparse.Namespace) -> int:
    from cnnlab.explain import show_features

    r = show_features(
        args.model,
        args.image,
        args.out,
        layers=args.layer,
        per_block=args.per_block,
        device=args.device,
    )
    if args.json:
        print_json(r)
    else:
        for b in r["blocks"]:
            print(f"{b['name']}: {'x'.join(str(s) for s in b['shape'])} (C x H x W)")
        print(f"figure: {r['file']}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from cnnlab.explain import explain_files
    from cnnlab.explain.localise import format_table, score_localisation

    if not args.inputs and not args.score:
        raise CnnlabError("give image files to explain, or --score with --data")
    if args.score and not args.data:
        raise CnnlabError("--score needs --data (a dataset with boxes: neu or a NEU-DET folder)")
    if args.inputs and not args.out:
        raise CnnlabError("-o DIR is needed: where the Grad-CAM figures go")
    out: dict[str, object] = {}
    failed = 0
    if args.inputs:
        results = explain_files(
            args.model,
            args.inputs,
            args.out,
            class_name=args.class_name,
            layer=args.layer,
            alpha=args.alpha,
            device=args.device,
            progress=not (args.quiet or args.json),
        )
        failed = sum("error" in r for r in results)
        out.update({"explanations": results, "failed": failed})
        if not args.json:
            for r in results:
                if "error" in r:
                    print(f"{r['file']}: ERROR {r['error']}")
                    continue
                extra = ""
                if r["explained"] != r["label"]:
                    extra = f", heatmap for {r['explained']} {r['explained_probability']:.3f}"
                print(f"{r['file']}: {r['label']} {r['probability']:.3f}{extra} -> {r['output']}")
    if args.score:
        from cnnlab.atomic import write_json

        loc = score_localisation(
            args.model,
            args.data,
            split=args.split,
            use_predicted=args.use_predicted,
            layer=args.layer,
            tolerance=args.tolerance,
            batch_size=args.batch_size,
            device=args.device,
            progress=not (args.quiet or args.json),
        )
        src = Path(args.model)
        folder = src if src.is_dir() else src.parent
        out_dir = Path(args.out) if args.out else folder / f"explain-{args.split}"
        path = out_dir / "localisation.json"
        try:
            write_json(path, loc)
        except OSError as e:
            raise CnnlabError(f"cannot write the scores ({e.strerror or e})", path) from None
        out.update({"localisation": loc, "localisation_file": str(path)})
        if not args.json:
            print(format_table(loc))
            print(f"scores: {path}")
    if args.json:
        print_json(out if args.inputs else {**out["localisation"], "file": str(path)})
    if failed:
        print(f"cnnlab: {failed} image(s) could not be explained", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.explain import write_report

    r = write_report(
        args.model,
        args.out,
        data=args.data,
        split=args.split,
        gradcams_per_class=args.gradcams,
        device=args.device,
        progress=not (args.quiet or args.json),
    )
    if args.json:
        print_json(r)
    else:
        print(f"report: {r['file']} ({r['bytes'] / 1e6:.1f} MB, {r['images']} images)")
    return 0
