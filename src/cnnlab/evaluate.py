"""Evaluate a trained model on a dataset: metrics as sklearn defines them, plus figures.

Writes confusion_matrix.png (counts and normalised), misclassified.png (true label,
predicted label, confidence) and reliability.png (calibration) into the output folder, and
returns the report as a dict. Optional: the reject option (`reject_below`, `reject_curve`,
cnnlab.reject) and accuracy under corrupted images (`corrupt`, cnnlab.robustness).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.backends import load_predictor
from cnnlab.calibration import (
    N_BINS,
    ReliabilityBins,
    probabilities,
    reliability_bins,
    reliability_figure,
    softmax_t,
    temperature_of,
)
from cnnlab.data.dataset import ImageDataset
from cnnlab.errors import CnnlabError
from cnnlab.metrics import classification_report
from cnnlab.reject import check_threshold, reject_curve_figure, selective_metrics
from cnnlab.reject import reject_curve as reject_curve_rows

SPLITS = ("test", "val", "train", "all")
MAX_MISCLASSIFIED = 32  # images in the misclassified grid


def match_classes(dataset_classes: list[str], model_classes: list[str], where: str) -> np.ndarray:
    """Map dataset label i -> model class index by name; unknown names are an error."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in dataset_classes if c not in index]
    if unknown:
        raise CnnlabError(
            f"class names do not match the model's: data has {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}, model knows {', '.join(model_classes)}",
            where,
        )
    return np.array([index[c] for c in dataset_classes], dtype=np.int64)


def model_labels(part: ImageDataset, model_classes: list[str], where: str) -> np.ndarray:
    """The labels of dataset `part` as indices of the model's classes (matched by name)."""
    return match_classes(part.class_names, model_classes, where)[part.labels.numpy()]


def run_folder_of(model_src: str | Path) -> Path | None:
    """The run folder a model belongs to (itself, or a model file's folder), if it has one.

    A model file inside a run folder still brings the run's recorded split with it.
    """
    model_src = Path(model_src)
    folder = model_src if model_src.is_dir() else model_src.parent
    return folder if (folder / "split.json").is_file() else None


def eval_data(
    data: str | Path | ImageDataset,
    meta: dict[str, Any],
    model_src: str | Path,
    *,
    progress: bool = True,
) -> tuple[ImageDataset, str, str]:
    """The images to score a model on: (dataset, where its split came from, name for errors).

    A given ImageDataset is used as it is; a data spec is loaded at the model's channels and
    size with the split of the model's run folder (`load_eval_data`).
    """
    if isinstance(data, ImageDataset):
        return data, "the given dataset's split", data.root or "dataset"
    ds, note = load_eval_data(data, meta, run_folder_of(model_src), progress=progress)
    return ds, note, str(data)


def load_eval_data(
    data: str | Path,
    meta: dict[str, Any],
    run_dir: Path | None,
    *,
    progress: bool = True,
) -> tuple[ImageDataset, str]:
    """Load `data` at the model's channels and size, with the run's split when it applies.

    Returns the dataset and a note saying where the split came from.
    """
    from cnnlab.data import load_dataset

    cfg: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "config.json").is_file():
        try:
            cfg = json.loads((run_dir / "config.json").read_text())["config"]
        except (ValueError, KeyError, OSError):
            cfg = {}
    ds = load_dataset(
        data,
        channels=int(meta["input"]["channels"]),
        size=tuple(meta["input"]["size"]),
        seed=int(cfg.get("seed", 0)),
        test_split=float(cfg.get("test_split", 0.2)),
        val_split=float(cfg.get("val_split", 0.0)),
        progress=progress,
    )
    split_file = run_dir / "split.json" if run_dir is not None else None
    if split_file is not None and split_file.is_file():
        try:
            manifest = json.loads(split_file.read_text())
        except (ValueError, OSError) as e:
            raise CnnlabError(f"unreadable split record ({e})", split_file) from None
        files = set(ds.files)
        if all(f in files for names in manifest.values() for f in names):
            return ds.with_split_manifest(manifest), "the run's split.json"
    return ds, "the dataset's own split"


def evaluate_model(
    model_src: str | Path,
    data: str | Path | ImageDataset,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    device: str = "auto",
    plots: bool = True,
    progress: bool = True,
    reject_below: float | None = None,
    reject_curve: bool = False,
    corrupt: bool = False,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1, confusion matrix (+ PNGs) of a model.

    Also the expected calibration error ("ece", with the model's temperature; and
    "ece_uncalibrated" when it has one); with `reject_below` P the rejection rate and the
    accuracy on accepted images; with `reject_curve` both over a grid of P; with `corrupt`
    the accuracy under brightness, contrast, noise, blur and shift corruptions.

    Parameters
    ----------
    model_src : run folder, .safetensors MODEL file, or an exported .onnx / .pt file
    data : dataset spec ("mnist", "neu", a folder, ...) or an ImageDataset
    split : "test" (default), "val", "train" or "all" (every image, for a hold-out set)
    out_dir : where the PNGs go; default RUN_DIR/eval-<split>/ (or beside the model file)
    n_bins : equal-width confidence bins for the ECE

    Examples
    --------
    >>> r = evaluate_model("runs/mnist", "mnist")  # doctest: +SKIP
    >>> r["accuracy"], r["confusion_matrix"][0][:3]  # doctest: +SKIP
    (0.9912, [976, 0, 1])
    """
    if split not in SPLITS:
        raise CnnlabError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if reject_below is not None:
        reject_below = check_threshold(reject_below)
    if n_bins < 1:
        raise CnnlabError(f"--bins must be a positive integer, got {n_bins}")
    model_src = Path(model_src)
    folder = model_src if model_src.is_dir() else model_src.parent
    predictor = load_predictor(model_src, device=device)
    meta = predictor.meta
    ds, split_note, where = eval_data(data, meta, model_src, progress=progress)
    part = ds.split(split)
    want = (int(meta["input"]["channels"]), *meta["input"]["size"])
    if tuple(part.images.shape[1:]) != tuple(want):
        raise CnnlabError(
            f"images are {tuple(part.images.shape[1:])}, the model wants (C, H, W) = {want}",
            where,
        )
    model_classes = list(meta["class_names"])
    y_true = model_labels(part, model_classes, where)
    if len(part) == 0:
        raise CnnlabError(f"the '{split}' split is empty", where)

    logits = predictor.logits(part.images).numpy()
    probs = probabilities(logits, meta)
    y_pred = probs.argmax(1)
    report = classification_report(y_true, y_pred, model_classes)
    report.update({"split": split, "split_source": split_note, "model": str(model_src)})
    bins = _confidence_report(report, logits, probs, y_true, meta, n_bins)
    if reject_below is not None:
        sel = selective_metrics(probs, y_true, reject_below)
        report.update({k: v for k, v in sel.items() if k != "n"})
    if reject_curve:
        report["reject_curve"] = reject_curve_rows(probs, y_true)
    if corrupt:
        from cnnlab.robustness import corruption_accuracy

        report["robustness"] = corruption_accuracy(
            lambda x: predictor.logits(x).numpy(),
            part.images,
            y_true,
            clean_accuracy=report["accuracy"],
            progress=progress,
        )

    if out_dir is None:
        base = folder
        out_dir = base / f"eval-{split}"
    out_dir = Path(out_dir)
    if plots:
        report["plots"] = _write_plots(
            out_dir, part, probs, y_true, y_pred, model_classes, report["confusion_matrix"]
        )
        report["plots"].update(
            _write_confidence_plots(out_dir, report, bins, probs, y_true, part.images)
        )
    return report


def _confidence_report(
    report: dict[str, Any],
    logits: np.ndarray,
    probs: np.ndarray,
    y_true: np.ndarray,
    meta: dict[str, Any],
    n_bins: int,
) -> dict[str, ReliabilityBins]:
    """Add ECE (and the uncalibrated ECE when a temperature is stored); returns the bins."""
    t = temperature_of(meta)
    bins = {"uncalibrated": reliability_bins(softmax_t(logits), y_true, n_bins)}
    if t:
        bins["calibrated"] = reliability_bins(probs, y_true, n_bins)
        report["ece_uncalibrated"] = bins["uncalibrated"].ece
    report["ece"] = bins["calibrated" if t else "uncalibrated"].ece
    report["ece_bins"] = n_bins
    report["temperature"] = t
    report["reliability"] = {name: b.to_dict() for name, b in bins.items()}
    return bins


def _write_confidence_plots(
    out_dir: Path,
    report: dict[str, Any],
    bins: dict[str, ReliabilityBins],
    probs: np.ndarray,
    y_true: np.ndarray,
    images: torch.Tensor,
) -> dict[str, str]:
    from cnnlab.plots import save_figure

    n = f"{report['split']} split, {report['n']} images"
    out = {}
    try:
        t = report["temperature"]
        named = {(f"T = {t:.3f}" if k == "calibrated" else k): b for k, b in bins.items()}
        out["reliability"] = str(
            save_figure(reliability_figure(named, title=n), out_dir / "reliability.png")
        )
        if "reject_curve" in report:
            fig = reject_curve_figure(probs, y_true, title=n)
            out["reject_curve"] = str(save_figure(fig, out_dir / "reject_curve.png"))
        if "robustness" in report:
            from cnnlab.robustness import corruption_examples_figure, robustness_figure

            fig = robustness_figure({report["model"]: report["robustness"]}, title=n)
            out["robustness"] = str(save_figure(fig, out_dir / "robustness.png"))
            fig = corruption_examples_figure(images[0])
            out["corruption_examples"] = str(save_figure(fig, out_dir / "corruption_examples.png"))
    except OSError as e:
        raise CnnlabError(f"cannot write evaluation plots ({e.strerror or e})", out_dir) from None
    return out


def _write_plots(
    out_dir: Path,
    part: ImageDataset,
    probs: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    cm: list[list[int]],
) -> dict[str, str]:
    from cnnlab.plots import confusion_matrix_figure, image_grid, save_figure

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        cm_path = save_figure(
            confusion_matrix_figure(np.array(cm), class_names), out_dir / "confusion_matrix.png"
        )
        wrong = np.flatnonzero(y_true != y_pred)
        # most confident mistakes first: the ones worth looking at
        wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:MAX_MISCLASSIFIED]
        images = [part.images[i].permute(1, 2, 0).numpy() for i in wrong]
        titles = [
            f"{part.files[i].rsplit('/', 1)[-1][:28]}\ntrue: {class_names[y_true[i]][:20]}\n"
            f"pred: {class_names[y_pred[i]][:20]} ({probs[i, y_pred[i]]:.0%})"
            for i in wrong
        ]
        fig = image_grid(
            images,
            titles,
            ncols=6,
            cell=2.4,
            suptitle=f"{len(np.flatnonzero(y_true != y_pred))} misclassified "
            f"of {len(y_true)} (most confident first, up to {MAX_MISCLASSIFIED})",
        )
        mis_path = save_figure(fig, out_dir / "misclassified.png")
    except OSError as e:
        raise CnnlabError(f"cannot write evaluation plots ({e.strerror or e})", out_dir) from None
    return {"confusion_matrix": str(cm_path), "misclassified": str(mis_path)}
