"""Subcommands `export` and `serve`: thin calls into cnnlab.export and cnnlab.serve."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli.common import add_command, print_json

DEVICES = ("auto", "cpu", "cuda")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = add_command(
        sub,
        "export",
        "export a trained model to ONNX or TorchScript, checked against PyTorch on real images",
        "  cnnlab export runs/mnist -o mnist.onnx                 # check on 64 MNIST test images\n"
        "  cnnlab export runs/neu --format torchscript -o neu.pt\n"
        "  cnnlab export runs/neu -o neu.onnx --images samples/ --json\n"
        "  cnnlab predict mnist.onnx digit.png                    # onnxruntime, same output\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder or .safetensors model")
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        help="default: from the suffix of -o (.onnx / .pt), else onnx",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="default: RUN_DIR/model.onnx (or model.pt)"
    )
    p.add_argument(
        "--images",
        metavar="IMAGE|FOLDER",
        nargs="+",
        help="check on these image files (default: test images of the training data)",
    )
    p.add_argument("--data", help="check on images of this dataset (mnist, neu, a folder)")
    p.add_argument(
        "--check-images", type=int, default=64, help="images the check uses (default 64)"
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest allowed |probability difference| to PyTorch (default 1e-4)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)

    p = add_command(
        sub,
        "serve",
        "serve a model over HTTP: POST /predict, GET /health, /model, /docs, and a web page at /",
        "  cnnlab serve runs/mnist                        # http://127.0.0.1:8000/\n"
        "  cnnlab serve neu.onnx --port 8080 --reject-below 0.8 --audit-log audit.jsonl\n"
        "  curl -F files=@part.jpg -F files=@other.jpg http://127.0.0.1:8000/predict\n",
    )
    p.add_argument(
        "model", metavar="RUN_DIR|MODEL", help="run folder, .safetensors, .onnx or .pt model"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--reject-below",
        type=float,
        metavar="P",
        help="mark a decision uncertain when its top probability is below P",
    )
    p.add_argument("--audit-log", metavar="FILE", help="append one JSON line per decision to FILE")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest image upload (default 10 MiB)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=25_000_000,
        help="largest image in pixels; larger ones are refused undecoded (default 25e6)",
    )
    p.add_argument("--max-files", type=int, default=16, help="images per request (default 16)")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="model calls at once, the cores shared between them (default 2)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--quiet", action="store_true", help="log warnings only, no request lines")
    p.set_defaults(func=cmd_serve)


def cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.export import export_model

    report = export_model(
        args.model,
        args.output,
        format=args.format,
        images=args.images,
        data=args.data,
        n_check=args.check_images,
        atol=args.atol,
        progress=not args.json,
    )
    if args.json:
        print_json(report)
        return 0
    c = report["check"]
    print(f"wrote {report['path']} ({report['format']}, {report['bytes'] / 2**20:.1f} MiB)")
    print(
        f"check ({c['backend']} vs PyTorch on {c['images']}): largest difference "
        f"{c['max_abs_diff_logits']:.3g} in logits, {c['max_abs_diff_probs']:.3g} in "
        f"probabilities; same label on {c['labels_agree']}/{c['n']}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.serve import serve

    if not 0 < args.port < 65536:
        raise CnnlabError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise CnnlabError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    print(f"cnnlab: serving {args.model} on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(
        args.model,
        host=args.host,
        port=args.port,
        log_level="warning" if args.quiet else "info",
        reject_below=args.reject_below,
        audit_log=args.audit_log,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_files=args.max_files,
        max_concurrency=args.max_concurrency,
        device=args.device,
    )
    return 0
