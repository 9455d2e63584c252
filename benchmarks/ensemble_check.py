"""Do several runs on the same split err on the same images, and would averaging them help?

For run folders trained on the same data and split (same --seed, other recipes), prints each
run's misclassified files on a split and those of every averaged subset (mean of the calibrated
probabilities, each run with its own test-time augmentation), float32 as `cnnlab evaluate`.
Used to judge an ensemble for NEU (README, "Accuracy").

    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/ensemble_check.py \\
        --data neu runs/nbest-1 runs/n160e-1 runs/n200px-1 [--split test] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from cnnlab.backends import load_predictor
from cnnlab.calibration import probabilities
from cnnlab.evaluate import eval_data, model_labels


def split_probs(run: str, data: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities, true labels in the model's class order, file names) of `run` on `split`."""
    pred = load_predictor(run, device="cpu")
    ds, _, where = eval_data(data, pred.meta, run, progress=False)
    part = ds.split(split)
    probs = probabilities(pred.logits(part.images).numpy(), pred.meta)
    y = model_labels(part, list(pred.meta["class_names"]), where)
    return probs, y, [Path(f).name for f in part.files]


def error_rows(
    names: list[str], probs: list[np.ndarray], truth: np.ndarray, files: list[str]
) -> list[dict]:
    """The misclassified files of each run, then of every subset of 2 or more runs averaged."""

    def wrong(p: np.ndarray) -> list[str]:
        return [files[i] for i in np.nonzero(p.argmax(1) != truth)[0]]

    rows = [{"runs": [n], "errors": wrong(p)} for n, p in zip(names, probs, strict=True)]
    for k in range(2, len(probs) + 1):
        for combo in itertools.combinations(range(len(probs)), k):
            mean = np.mean([probs[i] for i in combo], axis=0)
            rows.append({"runs": [names[i] for i in combo], "errors": wrong(mean)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders trained on the same split")
    p.add_argument("--data", required=True, help="mnist, neu or a dataset folder")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    probs, truth, files = [], None, None
    for run in args.runs:
        pr, y, names = split_probs(run, args.data, args.split)
        if truth is not None and (names != files or not np.array_equal(y, truth)):
            raise SystemExit(f"{run}: not the same {args.split} split as {args.runs[0]}")
        probs.append(pr)
        truth, files = y, names

    rows = error_rows(args.runs, probs, truth, files)
    if args.json:
        print(json.dumps({"split": args.split, "n": len(files), "rows": rows}, indent=2))
        return
    print(f"{args.split} split, {len(files)} images")
    for row in rows:
        label = " + ".join(Path(r).name for r in row["runs"])
        print(f"{label}: {len(row['errors'])} error(s) {', '.join(row['errors'])}")


if __name__ == "__main__":
    main()
