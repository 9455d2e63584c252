"""Accuracy under corruption before and after re-estimating BatchNorm statistics.

For each corruption and severity of `cnnlab.robustness`, the model's BatchNorm statistics are
re-estimated (`cnnlab.adapt.adapt_batchnorm`) on K images of the run's VALIDATION split under
the same corruption (its noise drawn with another seed), and the TEST split under that
corruption is scored with the model's TTA: what `cnnlab adapt` does on a line, with the
adapting images disjoint from the scored ones. `--one-class` also adapts on the val images of
each class alone (clean), the misuse the README warns about. Writes a JSON and a figure.

    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/bn_adapt.py runs/neu-best \
        --data neu --k 116 32 --out bn-adapt-neu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cnnlab.adapt import adapt_batchnorm
from cnnlab.evaluate import eval_data, model_labels
from cnnlab.plots import save_figure
from cnnlab.predict import image_logits
from cnnlab.robustness import SEVERITIES, corrupt, corruption_accuracy, robustness_figure
from cnnlab.train.checkpoint import load_model, resolve_model_file


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder (trained with a val split)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--k", type=int, nargs="+", default=[32], help="val images to adapt on")
    ap.add_argument("--prior", type=float, default=0.0, help="adapt_batchnorm's prior N")
    ap.add_argument("--one-class", action="store_true", help="also adapt on one class at a time")
    ap.add_argument("--out", default="bn-adapt", help="folder for bn_adapt.json and .png")
    args = ap.parse_args(argv)

    model_file = resolve_model_file(args.run)
    model, meta = load_model(model_file)
    ds, _, _ = eval_data(args.data, meta, model_file, progress=False)

    def split(name: str) -> tuple[torch.Tensor, np.ndarray]:
        part = ds.split(name)
        return part.images, model_labels(part, list(meta["class_names"]), args.data)

    (val, y_val), (test, y) = split("val"), split("test")
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))

    def accuracy(m: torch.nn.Module, images: torch.Tensor) -> float:
        logits = image_logits(m, images, device="cpu", tta=meta.get("tta"))
        return float((logits.argmax(1) == y).mean())

    def scores(u8: torch.Tensor) -> np.ndarray:
        return image_logits(model, u8, device="cpu", tta=meta.get("tta"))

    # as trained: the same scoring as `cnnlab evaluate --corrupt`
    results: dict[str, dict] = {"as trained": corruption_accuracy(scores, test, y)}
    jobs = [(name, s) for name, levels in SEVERITIES.items() for s in range(1, len(levels) + 1)]
    for k in args.k:
        adapt_on = val[order[:k]]
        r = {"clean_accuracy": accuracy(adapt_batchnorm(model, adapt_on, prior=args.prior), test)}
        r["accuracy"] = {name: [] for name in SEVERITIES}
        for name, sev in jobs:
            adapted = adapt_batchnorm(model, corrupt(adapt_on, name, sev, seed=1), prior=args.prior)
            r["accuracy"][name].append(accuracy(adapted, corrupt(test, name, sev)))
        results[f"adapted on {k} val images"] = r
    one_class = {}
    if args.one_class:
        for c, name in enumerate(meta["class_names"]):
            only = val[torch.from_numpy(np.flatnonzero(y_val == c))]
            one_class[name] = accuracy(adapt_batchnorm(model, only, prior=args.prior), test)
            print(
                f"adapted on the {len(only)} val images of {name} only: clean test accuracy "
                f"{100 * one_class[name]:.2f}%"
            )
    print(f"{args.run}: test accuracy (%), severity 1 / 2 / 3")
    for label, r in results.items():
        mean = float(np.mean([a for accs in r["accuracy"].values() for a in accs]))
        r["mean_corrupted_accuracy"] = mean
        cells = "  ".join(
            f"{n} " + "/".join(f"{100 * a:.1f}" for a in accs) for n, accs in r["accuracy"].items()
        )
        print(f"{label:26s} clean {100 * r['clean_accuracy']:.2f} mean {100 * mean:.2f}  {cells}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_adapt.json").write_text(
        json.dumps(
            {"run": args.run, "prior": args.prior, "results": results, "one_class": one_class},
            indent=1,
        )
    )
    fig = robustness_figure(
        results, title=f"{Path(args.run).name}: BatchNorm statistics re-estimated"
    )
    save_figure(fig, out / "bn_adapt.png")


if __name__ == "__main__":
    main()
