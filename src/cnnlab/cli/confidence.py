"""Subcommands `calibrate` and `adapt`; the text output of evaluate's confidence and robustness."""

from __future__ import annotations

import argparse
from typing import Any

from cnnlab.cli.common import add_command, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = add_command(
        sub,
        "calibrate",
        "fit a temperature on the run's validation split so that probabilities mean what "
        "they say; stored in model.safetensors and model.json",
        "  cnnlab train --data neu --model seed-neu --val-split 0.1 --out runs/neu\n"
        "  cnnlab calibrate runs/neu --data neu            # (train already did this)\n"
        "  cnnlab calibrate runs/neu --data neu --json\n"
        "  cnnlab adapt runs/neu line2_unlabelled/ --out runs/neu-line2\n"
        "  cnnlab calibrate runs/neu-line2 --data line2_labelled/ --split all\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or its model.safetensors")
    p.add_argument(
        "--data",
        required=True,
        help="the dataset the run was trained on (or, with --split all, labelled images)",
    )
    p.add_argument(
        "--split",
        choices=("val", "all"),
        default="val",
        help="val: the run's validation split (default); all: every image of --data, for "
        "labelled images the training never saw (e.g. from the conditions of cnnlab adapt)",
    )
    p.add_argument("--bins", type=int, default=15, help="confidence bins for the ECE (default 15)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_calibrate)
    _register_adapt(sub)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cnnlab.calibration import calibrate_model, calibration_line
    from cnnlab.errors import CnnlabError

    if args.bins < 1:
        raise CnnlabError(f"--bins must be a positive integer, got {args.bins}")
    r = calibrate_model(
        args.model,
        args.data,
        device=args.device,
        n_bins=args.bins,
        progress=not (args.quiet or args.json),
        split=args.split,
    )
    if args.json:
        print_json(r)
        return 0
    print(calibration_line(r))
    print(f"stored in {r['model']}")
    return 0


def print_confidence(report: dict[str, Any]) -> None:
    """ECE, the reject option and the robustness table of an evaluate report, as text."""
    line = f"ECE {report['ece']:.4f} ({report['ece_bins']} bins)"
    if report.get("temperature"):
        line += (
            f", temperature {report['temperature']:.3f}; "
            f"uncalibrated ECE {report['ece_uncalibrated']:.4f}"
        )
    else:
        line += ", no temperature stored (uncalibrated)"
    print(line)
    if "reject_below" in report:
        acc = report["accepted_accuracy"]
        print(
            f"reject below {report['reject_below']:g}: {report['rejection_rate']:.2%} sent to a "
            f"person, accuracy {'n/a' if acc is None else f'{acc:.4f}'} on the "
            f"{report['n_accepted']} accepted"
        )
    if "reject_curve" in report:
        print(f"{'reject below':>12} {'rejected':>9} {'accepted':>9} {'accuracy':>9}")
        for r in report["reject_curve"]:
            acc = r["accepted_accuracy"]
            print(
                f"{r['reject_below']:>12g} {r['rejection_rate']:>9.2%} {r['n_accepted']:>9} "
                f"{'n/a' if acc is None else f'{acc:.4f}':>9}"
            )
    if "robustness" in report:
        rob = report["robustness"]
        print(f"accuracy under corruption (clean {rob['clean_accuracy']:.4f}):")
        n_sev = max(len(v) for v in rob["severities"].values())
        print(f"{'corruption':<15}" + "".join(f"{f'sev {i + 1}':>16}" for i in range(n_sev)))
        for name, accs in rob["accuracy"].items():
            cells = "".join(
                f"{f'{a:.4f} ({p:g})':>16}"
                for a, p in zip(accs, rob["severities"][name], strict=True)
            )
            print(f"{name:<15}{cells}")
        print(f"{'mean':<15}{rob['mean_corrupted_accuracy']:>16.4f}")


def _register_adapt(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "adapt",
        "re-estimate a model's BatchNorm statistics on unlabelled images from new conditions "
        "(light, camera, focus) and write the adapted model to a new folder",
        "  cnnlab adapt runs/neu-best todays_parts/ --out runs/neu-best-line2\n"
        "  cnnlab predict runs/neu-best-line2 todays_parts/\n"
        "  cnnlab adapt runs/neu-best a.png b.png c.png d.png --out runs/adapted --json\n"
        "  cnnlab adapt runs/neu-best mixed_batch/ --prior 16 --out runs/hedged\n"
        "The images must be a fair mix of the classes the line sees: statistics from one\n"
        "class alone move every class towards it (README, 'Confidence and robustness').\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or its model.safetensors")
    p.add_argument(
        "images", nargs="+", metavar="IMAGE|FOLDER", help="unlabelled images (32 or more advised)"
    )
    p.add_argument("--out", required=True, help="new run folder for the adapted model")
    p.add_argument(
        "--prior",
        type=float,
        default=0.0,
        metavar="N",
        help="keep the trained statistics with the weight of N images (default 0: the new "
        "images alone)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from cnnlab.adapt import adapt_model

    r = adapt_model(args.model, args.images, args.out, prior=args.prior)
    if args.json:
        print_json(r)
        return 0
    print(
        f"BatchNorm statistics of {r['batchnorm_layers']} layers re-estimated on "
        f"{r['n_images']} images; weights unchanged"
    )
    print(f"adapted model written to {r['model']}")
    return 0
