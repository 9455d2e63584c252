"""One self-contained HTML report of a run: configuration, curves, metrics, kernels, Grad-CAMs.

Everything is inside the file (PNG images as base64 data URIs, inline CSS, no script, no
external URL), so it opens offline and can be mailed as is. All text from the run folder is
HTML-escaped. Without data it shows what the run folder holds (config.json, history.csv,
metrics.json, model.json, split.json, eval-*/ figures); with data it also evaluates the
model (cnnlab.evaluate) and draws Grad-CAMs, scored against boxes when the data has them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import __version__
from cnnlab.atomic import write_text
from cnnlab.errors import CnnlabError

GRADCAMS_PER_CLASS = 2  # Grad-CAM examples per class in the report

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.note { color: #666; font-size: .9em; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (for embedding)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An <img> whose source is the PNG itself, base64 in a data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def table(head: list[str], rows: list[list[Any]]) -> str:
    """An HTML table with escaped cells."""
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else str(v)


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"{path.name}: not in the run folder")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        notes.append(f"{path.name}: unreadable ({e})")
        return None


def _read_history(path: Path, notes: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        notes.append(f"{path.name}: not in the run folder")
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        [int(r["epoch"]) for r in rows]
    except (ValueError, KeyError, OSError, csv.Error) as e:
        notes.append(f"{path.name}: unreadable ({e})")
        return []
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _config_section(config: Any, model_meta: dict[str, Any], n_params: int) -> str:
    parts = ["<h2>Model and configuration</h2>"]
    inp = model_meta.get("input", {})
    parts.append(
        table(
            ["model", "value"],
            [
                ["architecture", model_meta.get("architecture")],
                [
                    "input (C, H, W)",
                    f"{inp.get('channels')} x {' x '.join(map(str, inp.get('size', [])))}",
                ],
                ["classes", ", ".join(model_meta.get("class_names", []))],
                ["parameters", f"{n_params:,}"],
            ],
        )
    )
    if isinstance(config, dict):
        cfg = config.get("config", {})
        if isinstance(cfg, dict) and cfg:
            parts.append("<h3>Training settings (config.json)</h3>")
            parts.append(table(["setting", "value"], [[k, _fmt(v)] for k, v in cfg.items()]))
        extra = [[k, _fmt(config[k])] for k in ("optimizer", "loss", "runtime") if k in config]
        if extra:
            parts.append(table(["", "value"], extra))
        dataset = config.get("dataset")
        if isinstance(dataset, dict) and isinstance(dataset.get("splits"), dict):
            classes = list(dataset.get("class_names", []))
            splits = dataset["splits"]
            parts.append(
                f"<h3>Dataset</h3><p>{_e(dataset.get('layout', ''))} at "
                f"<code>{_e(dataset.get('root', ''))}</code>, {_e(dataset.get('n', ''))} images, "
                f"{_e(dataset.get('image_size', ''))} (H, W), "
                f"{_e(dataset.get('channels', ''))} channel(s)</p>"
            )
            rows = [[c, *(splits[s].get(c, "") for s in splits)] for c in classes]
            parts.append(table(["class", *splits], rows))
    return "".join(parts)


def _training_section(history: list[dict[str, str]], metrics: Any, folder: Path) -> str:
    from cnnlab.plots import training_curves

    parts = ["<h2>Training</h2>"]
    if history:
        parts.append(img_tag(figure_png(training_curves(history)), "training curves"))
        keys = [k for k in history[0] if any(r.get(k) not in (None, "") for r in history)]
        parts.append(table(keys, [[r.get(k, "") for k in keys] for r in history]))
    elif (folder / "curves.png").is_file():
        parts.append(img_tag((folder / "curves.png").read_bytes(), "training curves"))
    else:
        parts.append('<p class="note">No training history in the run folder.</p>')
    if isinstance(metrics, dict):
        test = metrics.get("test") or {}
        rows = [
            ["best epoch", metrics.get("best_epoch")],
            ["epochs run", metrics.get("epochs_run")],
            ["stopped early", metrics.get("stopped_early")],
            ["training time (s)", metrics.get("train_seconds")],
            [
                "test accuracy",
                _pct(test.get("accuracy")) if test.get("accuracy") is not None else "-",
            ],
            ["test loss", _fmt(test.get("loss"))],
            ["test images", test.get("n")],
        ]
        parts.append("<h3>Recorded test result (metrics.json)</h3>")
        parts.append(table(["", "value"], [[k, _fmt(v)] for k, v in rows]))
    return "".join(parts)


def _saved_eval_section(folder: Path) -> str:
    parts = []
    for d in sorted(folder.glob("eval-*")):
        pngs = [d / n for n in ("confusion_matrix.png", "misclassified.png") if (d / n).is_file()]
        if pngs:
            parts.append(f"<h3>Saved evaluation: {_e(d.name)}</h3>")
            parts.extend(img_tag(p.read_bytes(), f"{d.name} {p.stem}") for p in pngs)
    if not parts:
        return ""
    return (
        "<h2>Evaluation (figures saved in the run folder)</h2>"
        '<p class="note">Pass --data to evaluate here and add Grad-CAMs.</p>' + "".join(parts)
    )


def _evaluation_section(
    model_src: Path, ds: Any, split: str, split_note: str, device: str, progress: bool
) -> str:
    from cnnlab.evaluate import evaluate_model

    with tempfile.TemporaryDirectory() as tmp:
        r = evaluate_model(
            model_src, ds, split=split, out_dir=tmp, device=device, progress=progress
        )
        pngs = {k: Path(p).read_bytes() for k, p in r["plots"].items()}
    rows = [
        [name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
        for name, m in r["per_class"].items()
    ]
    mac = r["macro_avg"]
    rows.append(
        [
            "macro average",
            f"{mac['precision']:.4f}",
            f"{mac['recall']:.4f}",
            f"{mac['f1']:.4f}",
            r["n"],
        ]
    )
    return "".join(
        [
            f"<h2>Evaluation: {_e(split)} split</h2>",
            f"<p>Accuracy <b>{_pct(r['accuracy'])}</b> on {r['n']} images "
            f"(split from {_e(split_note)}).</p>",
            table(["class", "precision", "recall", "F1", "support"], rows),
            "<h3>Confusion matrix</h3>",
            img_tag(pngs["confusion_matrix"], "confusion matrix"),
            "<h3>Misclassified images</h3>",
            img_tag(pngs["misclassified"], "misclassified images"),
        ]
    )


def _gradcam_section(
    model: Any, meta: dict[str, Any], part: Any, device: str, per_class: int
) -> str:
    from cnnlab.evaluate import model_labels
    from cnnlab.explain.figures import gradcam_grid
    from cnnlab.explain.gradcam import default_layer, grad_cam_images, layer_name
    from cnnlab.train.engine import to_input

    classes = list(meta["class_names"])
    labels = model_labels(part, classes, part.root or "dataset")
    chosen = [i for c in range(len(classes)) for i in np.flatnonzero(labels == c)[:per_class]]
    if not chosen:
        return ""
    layer = default_layer(model, to_input(part.images[chosen[:1]]))
    heats, probs = grad_cam_images(model, part.images[chosen], layer=layer, device=device)
    images = [part.images[i].permute(1, 2, 0).numpy() for i in chosen]
    titles = []
    for i, p in zip(chosen, probs, strict=True):
        pred = int(p.argmax())
        titles.append(
            f"{part.files[i].rsplit('/', 1)[-1][:24]}\ntrue: {classes[labels[i]]}\n"
            f"pred: {classes[pred]} ({p[pred]:.0%})"
        )
    boxes = [part.boxes.get(int(i)) for i in chosen] if part.boxes else None
    fig = gradcam_grid(images, heats, titles, boxes=boxes, ncols=min(6, max(2, per_class * 2)))
    note = " White rectangles are the annotated boxes." if boxes else ""
    return (
        "<h2>Grad-CAM: where the network looks</h2>"
        f"<p>Heatmaps for the predicted class at layer <code>{_e(layer_name(model, layer))}"
        f"</code>, the first {per_class} image(s) of each class.{_e(note)}</p>"
        + img_tag(figure_png(fig), "Grad-CAM examples")
    )


def _localisation_section(loc: dict[str, Any]) -> str:
    keys = ("pointing", "mass_in_boxes", "peak_on_border")
    rows = []
    for name, s in [*loc["per_class"].items(), ("all images", loc["all"])]:
        if s["n"]:
            b = s["baseline"]
            cells = [_pct(s[k]) for k in keys]
            rows.append(
                [
                    name,
                    s["n"],
                    s["correct"],
                    *cells,
                    _pct(b["pointing_centre"]),
                    _pct(b["mass_uniform"]),
                ]
            )
    m = loc["macro"]
    cells = [_pct(m[k]) for k in keys]
    base = m["baseline"]
    rows.append(
        ["class mean", "", "", *cells, _pct(base["pointing_centre"]), _pct(base["mass_uniform"])]
    )
    head = [
        "class",
        "n",
        "correct",
        "pointing",
        "mass in boxes",
        "border",
        "centre pointing",
        "uniform mass",
    ]
    return (
        "<h3>Localisation against the annotated boxes</h3>"
        f"<p>Grad-CAM for the {_e(loc['target'])} class on {loc['n']} images. Pointing: the "
        "heatmap's maximum lies in a box; mass: the share of the heatmap inside boxes; border: "
        f"the maximum lies in the outer {loc['border_px']} px of the image "
        f"({_pct(loc['border_area'])} of its area), where zero padding, not the surface, "
        "gives the evidence. The baseline columns give pointing for a centre-peaked map and "
        "mass for a uniform map (chance).</p>" + table(head, rows)
    )


def build_report(
    model_src: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    gradcams_per_class: int = GRADCAMS_PER_CLASS,
    device: str = "auto",
    progress: bool = True,
) -> str:
    """The report of a run folder (or a model file inside one) as one HTML string."""
    from cnnlab.evaluate import SPLITS, eval_data
    from cnnlab.explain.features import kernel_weights
    from cnnlab.explain.figures import kernels_figure
    from cnnlab.models import count_parameters
    from cnnlab.train.checkpoint import load_model

    if split not in SPLITS:
        raise CnnlabError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if gradcams_per_class < 0:
        raise CnnlabError(f"--gradcams must be 0 or more, got {gradcams_per_class}")
    model_src = Path(model_src)
    folder = model_src if model_src.is_dir() else model_src.parent
    model, meta = load_model(model_src)
    notes: list[str] = []
    config = _read_json(folder / "config.json", notes)
    metrics = _read_json(folder / "metrics.json", notes)
    _read_json(folder / "model.json", notes)  # the same JSON as the model file's metadata
    split_record = _read_json(folder / "split.json", notes)
    history = _read_history(folder / "history.csv", notes)

    body = [_config_section(config, meta, count_parameters(model))]
    if isinstance(split_record, dict):
        counts = ", ".join(
            f"{_e(k)}: {len(v)}" for k, v in split_record.items() if isinstance(v, list)
        )
        body.append(
            f'<p class="note">Split recorded in split.json (images per split): {counts}.</p>'
        )
    body.append(_training_section(history, metrics, folder))
    if data is None:
        body.append(_saved_eval_section(folder))
    else:
        ds, split_note, _ = eval_data(data, meta, folder, progress=progress)
        body.append(_evaluation_section(model_src, ds, split, split_note, device, progress))
    w = kernel_weights(model)
    body.append(
        "<h2>Learned first-layer kernels</h2><p>The network learns its own kernels: these are "
        "the first convolution layer's weights, on one scale (mid-gray = 0).</p>"
        + img_tag(figure_png(kernels_figure(w)), "first-layer kernels")
    )
    if data is not None and gradcams_per_class > 0:
        from cnnlab.explain.localise import score_localisation

        part = ds.split(split)
        body.append(_gradcam_section(model, meta, part, device, gradcams_per_class))
        if part.boxes:
            loc = score_localisation(model_src, ds, split=split, device=device, progress=progress)
            body.append(_localisation_section(loc))
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"cnnlab report: {folder.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="note">{_e(model_src)}, written {_e(stamp)} by '
        f"cnnlab {_e(__version__)}</p>" + "".join(body) + "</body></html>\n"
    )


def write_report(model_src: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Write the report (see `build_report`) atomically to `out`; returns its path and size."""
    text = build_report(model_src, **kwargs)
    out = Path(out)
    try:
        write_text(out, text)
    except OSError as e:
        raise CnnlabError(f"cannot write the report ({e.strerror or e})", out) from None
    return {"file": str(out), "bytes": len(text.encode("utf-8")), "images": text.count("<img ")}
