"""After `cnnlab adapt`: does the temperature fitted on the clean val split still hold, and
what does refitting it on labelled images from the new conditions buy?

For each run and condition (a corruption of `cnnlab.robustness` at one severity): the
BatchNorm statistics are re-estimated on 32 corrupted val images (a random mix, as
benchmarks/bn_adapt.py), the temperature is refitted on the other val images under the same
corruption (what `cnnlab calibrate NEW --data LABELLED --split all` does), and the corrupted
TEST split is scored with the clean-val temperature (what training stores) and with the
refitted one: ECE and the share below 0.9.

    CNNLAB_DATA=../shared/data .venv/bin/python benchmarks/adapt_calibration.py RUN... \
        --data neu --out adapt-calibration.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from cnnlab.adapt import adapt_batchnorm
from cnnlab.calibration import calibration_record, expected_calibration_error, softmax_t
from cnnlab.evaluate import eval_data, model_labels
from cnnlab.predict import image_logits
from cnnlab.robustness import corrupt
from cnnlab.train.checkpoint import load_model, resolve_model_file

CONDITIONS = (("gaussian_noise", 1), ("contrast", 2), ("blur", 2))
ADAPT_IMAGES = 32


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders trained with a val split")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="adapt-calibration.json")
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        model_file = resolve_model_file(run)
        model, meta = load_model(model_file)
        ds, _, _ = eval_data(args.data, meta, model_file, progress=False)
        val, test = ds.split("val"), ds.split("test")
        classes = list(meta["class_names"])
        y_val, y_test = (
            model_labels(val, classes, args.data),
            model_labels(test, classes, args.data),
        )
        tta = meta.get("tta")

        def logits(m: torch.nn.Module, u8: torch.Tensor, tta: object = tta) -> np.ndarray:
            return np.asarray(image_logits(m, u8, device="cpu", tta=tta))

        # the temperature today's training stores: fitted on the clean val split
        t_clean = calibration_record(logits(model, val.images), y_val)["temperature"] or 1.0
        order = torch.randperm(len(y_val), generator=torch.Generator().manual_seed(0))
        y_cal = y_val[order[ADAPT_IMAGES:].numpy()]
        for name, severity in CONDITIONS:
            v = corrupt(val.images[order], name, severity, seed=1)
            adapted = adapt_batchnorm(model, v[:ADAPT_IMAGES])
            record = calibration_record(logits(adapted, v[ADAPT_IMAGES:]), y_cal)
            t_new = record["temperature"] or t_clean
            z = logits(adapted, corrupt(test.images, name, severity, seed=0))
            p_clean, p_new = softmax_t(z, t_clean), softmax_t(z, t_new)
            row = {
                "run": run,
                "condition": f"{name} {severity}",
                "accuracy": float((z.argmax(1) == y_test).mean()),
                "t_clean_val": t_clean,
                "t_refit": t_new,
                "ece_clean_val_t": expected_calibration_error(p_clean, y_test),
                "ece_refit_t": expected_calibration_error(p_new, y_test),
                "below_0.9_clean_val_t": float((p_clean.max(1) < 0.9).mean()),
                "below_0.9_refit_t": float((p_new.max(1) < 0.9).mean()),
            }
            rows.append(row)
            print(
                f"{run} {row['condition']}: accuracy {row['accuracy']:.4f}, T {t_clean:.3f} -> "
                f"{t_new:.3f}, ECE {row['ece_clean_val_t']:.4f} -> {row['ece_refit_t']:.4f}, "
                f"below 0.9 {row['below_0.9_clean_val_t']:.3f} -> {row['below_0.9_refit_t']:.3f}",
                flush=True,
            )
    keys = [k for k in rows[0] if k not in ("run", "condition")]
    means = {k: statistics.mean(r[k] for r in rows) for k in keys}
    better = sum(r["ece_refit_t"] < r["ece_clean_val_t"] for r in rows)
    print("means: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    print(f"refit ECE lower in {better} of {len(rows)}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "means": means, "refit_better": better}, f, indent=1)


if __name__ == "__main__":
    main()
