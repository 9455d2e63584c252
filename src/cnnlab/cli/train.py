"""Subcommands `models`, `train`, `evaluate`, `predict`: thin calls into cnnlab.train & co."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli.common import add_command, parse_duration, parse_size, print_json

DEVICES = ("auto", "cpu", "cuda")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = add_command(
        sub,
        "models",
        "list the registered models: input shape, parameters, FLOPs per image",
        "  cnnlab models\n  cnnlab models --json\n",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models)

    p = add_command(
        sub,
        "train",
        "train a model on a dataset and write a run folder",
        "  cnnlab train --data mnist --model seed-mnist --out runs/mnist\n"
        "  cnnlab train --data neu --model seed-neu --epochs 10 --out runs/neu\n"
        "  cnnlab train --data neu --preset best --out runs/neu-best\n"
        "  cnnlab train --data my_defects/ --preset best      # model, size, augmentation chosen\n"
        "  cnnlab train --data mnist --preset fast              # 99% in seconds, see README\n"
        "  cnnlab train --data mnist --preset best --time-budget 5m   # epochs fitted to it\n"
        "  cnnlab train --data mnist --preset fast --time-budget 5s   # schedule on the clock\n"
        "  cnnlab train --data my_images/ --model seed-neu --val-split 0.1 --patience 3 \\\n"
        "      --class-weights auto --image-size 128x128\n"
        "  cnnlab train --resume runs/neu                  # continue an interrupted run\n"
        "  cnnlab train --resume runs/neu --epochs 20      # or extend a finished one\n"
        "  torchrun --nproc-per-node 2 -m cnnlab train --data mnist --model seed-mnist \\\n"
        "      --out runs/mnist-ddp                        # data-parallel, see the README\n",
    )
    p.add_argument("--data", help="mnist, neu, or a dataset folder / file (required)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last checkpoint with its recorded settings "
        "(only --epochs, --patience, --device, --threads may change)",
    )
    p.add_argument("--model", help="registered model name (see `cnnlab models`)")
    p.add_argument(
        "--preset",
        choices=("lecture", "tuned", "best", "fast"),
        help="lecture: the notes' model and recipe; tuned: the same models, epochs and batch "
        "with a one-cycle learning rate (+ flips for NEU); best: the most accurate recipe for this "
        "data (any folder); fast: quickest to 99%% on MNIST. Flags given override it",
    )
    p.add_argument("--epochs", type=int, help="passes over the training images (recipe default)")
    p.add_argument("--batch-size", type=int, help="images per step (recipe default: 50)")
    p.add_argument("--lr", type=float, help="(peak) learning rate (recipe default: 1e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), help="default: adam (the notes')")
    p.add_argument("--weight-decay", type=float, help="L2 / decoupled weight decay (default 0)")
    p.add_argument(
        "--schedule",
        choices=("constant", "onecycle", "cosine"),
        help="learning-rate schedule over the run (default constant)",
    )
    p.add_argument("--label-smoothing", type=float, help="e.g. 0.1 (default 0)")
    p.add_argument(
        "--augment",
        choices=(
            "none",
            "digits",
            "flips",
            "surface",
            "surface-noise",
            "texture",
            "texture-full",
        ),
        help="digits: small affine moves; flips: left-right / up-down mirrors (axes kept, "
        "for surfaces with a direction such as rolled steel); surface: flips + shifts, "
        "brightness, contrast (NEU best's); surface-noise: + noise of a std drawn per image "
        "up to 0.04; texture: flips and 90-degree rotations; "
        "texture-full: + shifts, brightness, contrast, noise (default none)",
    )
    p.add_argument("--ema", type=float, help="keep an average of the weights, e.g. 0.999")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate with the training's symmetries averaged: the 4 mirrors after "
        "--augment flips, else the 8 flips / rotations (orientation-free data only)",
    )
    p.add_argument("--width", choices=("s", "m", "l"), help="width of the resnet-* models")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init and batch order")
    p.add_argument(
        "--val-split",
        type=float,
        help="fraction of the training images held out for validation and checkpoint "
        "choice (default 0; --preset best: 0.1)",
    )
    p.add_argument(
        "--test-split",
        type=float,
        default=0.2,
        help="test fraction for data without its own test split (default 0.2)",
    )
    p.add_argument(
        "--patience",
        type=int,
        help="stop after N epochs without val-loss improvement (needs --val-split)",
    )
    p.add_argument(
        "--time-budget",
        type=parse_duration,
        metavar="DURATION",
        help="train at most about this long (600, 600s, 10m, 1.5h): a few steps are timed "
        "first and the epochs fitted to it, then re-planned after each epoch from the real "
        "pace (--preset best for MNIST / NEU: 9m); 0 = no limit",
    )
    p.add_argument(
        "--budget-mode",
        choices=("plan", "clock"),
        help="how --time-budget is kept: plan = whole epochs chosen from a few timed steps "
        "(default; the run equals --epochs N unless re-planned); clock = the learning rate "
        "follows the time spent and training stops when it is up, mid-epoch if need be "
        "(--preset fast)",
    )
    p.add_argument(
        "--select",
        choices=("loss", "accuracy", "last"),
        help="checkpoint kept: lowest val loss (default), highest val accuracy, or the last "
        "epoch (--preset best); --patience counts epochs without such an improvement",
    )
    p.add_argument(
        "--class-weights",
        choices=("none", "auto"),
        help="auto: weight the loss by n/(k*count) per class for unbalanced data",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if present")
    p.add_argument(
        "--image-size", type=parse_size, help="resize images to HxW (default: as stored)"
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="convert images to 1 or 3 channels (default: as stored)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on, measured faster)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on CPUs where a bf16 convolution measured at least "
        "1.2x float32's speed, a probe cached in $CNNLAB_CACHE/bf16-probe.json; off on CUDA, "
        "slower there for these small models, README)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=cmd_train)

    p = add_command(
        sub,
        "evaluate",
        "evaluate a run or model: accuracy, per-class P/R/F1, confusion matrix, calibration",
        "  cnnlab evaluate runs/mnist --data mnist\n"
        "  cnnlab evaluate runs/neu --data neu --split test --json\n"
        "  cnnlab evaluate model.safetensors --data holdout/ --split all --out-dir eval/\n"
        "  cnnlab evaluate runs/neu --data neu --reject-below 0.9 --reject-curve\n"
        "  cnnlab evaluate runs/neu --data neu --corrupt --json\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder, .safetensors, .onnx or .pt")
    p.add_argument("--data", required=True, help="mnist, neu, or a dataset folder / file")
    p.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which images (default test; all = every image, for a hold-out set)",
    )
    p.add_argument("--out-dir", help="where the PNGs go (default RUN_DIR/eval-<split>/)")
    p.add_argument(
        "--reject-below",
        type=float,
        metavar="P",
        help="images with top probability < P are 'uncertain': report the rejection rate "
        "and the accuracy on the accepted ones",
    )
    p.add_argument(
        "--reject-curve",
        action="store_true",
        help="rejection rate and accepted accuracy over a grid of P (+ reject_curve.png)",
    )
    p.add_argument(
        "--corrupt",
        action="store_true",
        help="accuracy under brightness, contrast, noise, blur, shift (+ robustness.png)",
    )
    p.add_argument("--bins", type=int, default=15, help="confidence bins for the ECE (default 15)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = add_command(
        sub,
        "predict",
        "label and class probabilities for image files or folders",
        "  cnnlab predict runs/mnist digit.png\n"
        "  cnnlab predict runs/neu samples/ --top-k 3 --json\n"
        "  cnnlab predict runs/mnist digit.png --plot digit-probs.png\n"
        "  cnnlab predict runs/neu samples/ --reject-below 0.9\n",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder, .safetensors, .onnx or .pt")
    p.add_argument("inputs", metavar="IMAGE|FOLDER", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list (default 3)")
    p.add_argument("--plot", metavar="OUT.png", help="draw each image beside its stem plot")
    p.add_argument(
        "--reject-below",
        type=float,
        metavar="P",
        help="mark images whose top probability is below P as uncertain (for a person)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads per model call (default: physical cores; 1 where other software "
        "shares the CPU: far steadier latency)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab.models import describe_models

    rows = describe_models()
    if args.json:
        print_json({"models": rows})
        return 0
    w = max([4, *(len(r["name"]) for r in rows)])
    print(
        f"{'name':<{w}} {'input (C,H,W)':<15} {'classes':>7} {'parameters':>12} {'FLOPs/image':>13}"
    )
    for r in rows:
        shape = "x".join(str(s) for s in r["input_shape"])
        print(
            f"{r['name']:<{w}} {shape:<15} {r['num_classes']:>7} {r['parameters']:>12,} "
            f"{r['flops'] / 1e6:>11.1f} M"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.train import TrainConfig, train
    from cnnlab.train.distributed import process_group
    from cnnlab.train.resume import given_settings, resume_config

    config = TrainConfig(
        data=args.data,
        model=args.model,
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        ema=args.ema,
        tta=args.tta,
        width=args.width,
        seed=args.seed,
        val_split=args.val_split,
        test_split=args.test_split,
        patience=args.patience,
        time_budget=args.time_budget,
        budget_mode=args.budget_mode,
        select=args.select,
        class_weights=args.class_weights,
        device=args.device,
        channels_last=args.channels_last,
        bf16=args.bf16,
        threads=args.threads,
        image_size=args.image_size,
        channels=args.channels,
        out=args.out,
    )
    if args.resume:
        if args.out:
            raise CnnlabError("--resume continues the run in its own folder: drop --out")
        config = resume_config(args.resume, **given_settings(config))
    elif not args.data:
        raise CnnlabError("--data is required (or --resume RUN_DIR)")
    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)

    with process_group(config.device) as world:
        result = train(config, progress=not quiet, log=log, resume=bool(args.resume))
    if world is not None and not world.is_main:
        return 0  # rank 0 reports
    summary = {
        "run_dir": str(result.run_dir),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "test": result.test,
    }
    if args.json:
        print_json(summary)
    else:
        acc = result.test.get("accuracy")
        extra = f", test accuracy {acc:.4f}" if acc is not None else ""
        print(f"run folder: {result.run_dir}{extra}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.cli.confidence import print_confidence
    from cnnlab.evaluate import evaluate_model

    report = evaluate_model(
        args.model,
        args.data,
        split=args.split,
        out_dir=args.out_dir,
        device=args.device,
        progress=not (args.quiet or args.json),
        reject_below=args.reject_below,
        reject_curve=args.reject_curve,
        corrupt=args.corrupt,
        n_bins=args.bins,
    )
    if args.json:
        print_json(report)
        return 0
    print(
        f"{report['split']} split (from {report['split_source']}): accuracy "
        f"{report['accuracy']:.4f} on {report['n']} images"
    )
    width = max(9, *(len(c) for c in report["class_names"]))
    print(f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, m in report["per_class"].items():
        print(
            f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
            f"{m['support']:>8}"
        )
    print_confidence(report)
    for kind, path in report.get("plots", {}).items():
        print(f"{kind}: {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnlab.predict import predict_files

    results = predict_files(
        args.model,
        args.inputs,
        top_k=args.top_k,
        plot=args.plot,
        device=args.device,
        reject_below=args.reject_below,
        threads=args.threads,
    )
    failed = sum("error" in r for r in results)
    if args.json:
        print_json(
            {
                "predictions": results,
                "failed": failed,
                "plot": args.plot,
                "reject_below": args.reject_below,
            }
        )
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: ERROR {r['error']}")
                continue
            tops = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"])
            true = f" (true {r['true_label']})" if "true_label" in r else ""
            doubt = "  UNCERTAIN (for a person)" if r.get("uncertain") else ""
            print(f"{r['file']}: {r['label']}{true}  [{tops}]{doubt}")
        if args.plot:
            print(f"plot: {args.plot}")
    if failed:
        print(
            f"cnnlab: {failed} of {len(results)} image(s) could not be predicted", file=sys.stderr
        )
    return 1 if failed else 0
