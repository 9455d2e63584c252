"""`cnnlab show`, `explain`, `report` round trips on a tiny run trained on a generated
NEU-DET-like folder (striped patches with VOC boxes), and bad input -> one line, exit 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.images import write_image

pytestmark = pytest.mark.slow  # the module trains a tiny run once (~10 s on 2 busy cores)

SIZE, PATCH = 32, 10  # image and defect patch side, pixels
CLASSES = ("patches", "scratches")  # horizontal stripes, vertical stripes


def write_neu_like(root: Path, n_per_class: int = 40, seed: int = 0) -> tuple[Path, dict]:
    """IMAGES/<class>_<i>.png + ANNOTATIONS/<class>_<i>.xml (one VOC box on the patch).

    Returns the folder and file stem -> box (xmin, ymin, xmax, ymax), 1-based inclusive."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for c, name in enumerate(CLASSES):
        for i in range(1, n_per_class + 1):
            img = rng.integers(0, 60, (SIZE, SIZE)).astype(np.uint8)
            r, col = rng.integers(0, SIZE - PATCH + 1, 2)
            patch = np.zeros((PATCH, PATCH), np.uint8)
            if c == 0:
                patch[::2, :] = 255
            else:
                patch[:, ::2] = 255
            img[r : r + PATCH, col : col + PATCH] = patch
            stem = f"{name}_{i}"
            write_image(root / "IMAGES" / f"{stem}.png", img)
            box = (int(col) + 1, int(r) + 1, int(col) + PATCH, int(r) + PATCH)
            boxes[stem] = box
            (root / "ANNOTATIONS").mkdir(parents=True, exist_ok=True)
            (root / "ANNOTATIONS" / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.png</filename><size><width>{SIZE}</width>"
                f"<height>{SIZE}</height><depth>1</depth></size><object><name>{name}</name>"
                f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
                f"<ymax>{box[3]}</ymax></bndbox></object></annotation>"
            )
    return root, boxes


@pytest.fixture(scope="module")
def neu_run(tmp_path_factory: pytest.TempPathFactory):
    """A seed-mnist run (at 32x32, 2 classes) trained for a few seconds on the folder."""
    from cnnlab.train import TrainConfig, train

    root = tmp_path_factory.mktemp("explain")
    data, boxes = write_neu_like(root / "neu-like")
    run = root / "run"
    cfg = TrainConfig(
        data=str(data),
        model="seed-mnist",
        epochs=4,
        batch_size=20,
        seed=0,
        test_split=0.25,
        out=str(run),
        device="cpu",
    )
    train(cfg, progress=False, log=lambda _m: None)
    return data, boxes, run


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("cnnlab: error: ")
    for n in needles:
        assert n in err, err


def test_show_kernels_and_features(neu_run, tmp_path: Path, capsys) -> None:
    data, _, run = neu_run
    code, out, _ = run_main(
        capsys, "show", "kernels", str(run), "-o", str(tmp_path / "k.png"), "--json"
    )
    assert code == 0
    r = json.loads(out)
    assert (r["kernels"], r["weight_shape"], r["layer"]) == (32, [32, 1, 3, 3], "features.0.0")
    assert (tmp_path / "k.png").stat().st_size > 1000
    image = data / "IMAGES" / "patches_1.png"
    code, out, _ = run_main(
        capsys, "show", "features", str(run), str(image), "-o", str(tmp_path / "f.png")
    )
    assert code == 0
    assert "features.0: 32x16x16" in out and "features.1: 64x8x8" in out
    assert (tmp_path / "f.png").stat().st_size > 1000
    code, out, _ = run_main(
        capsys,
        "show",
        "features",
        str(run / "model.safetensors"),
        str(image),
        "-o",
        str(tmp_path / "f2.png"),
        "--layer",
        "features.1.0",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["blocks"] == [{"name": "features.1.0", "shape": [64, 16, 16]}]


def test_explain_images_with_a_bad_file(neu_run, tmp_path: Path, capsys) -> None:
    data, _, run = neu_run
    good = [data / "IMAGES" / "patches_2.png", data / "IMAGES" / "scratches_2.png"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG truncated")
    out_dir = tmp_path / "cams"
    code, out, err = run_main(
        capsys, "explain", str(run), *map(str, good), str(bad), "-o", str(out_dir), "--json"
    )
    assert code == 1 and "1 image(s) could not be explained" in err
    r = json.loads(out)
    assert r["failed"] == 1
    ok = [e for e in r["explanations"] if "error" not in e]
    assert [Path(e["output"]).name for e in ok] == [
        "patches_2-gradcam.png",
        "scratches_2-gradcam.png",
    ]
    for e in ok:
        assert Path(e["output"]).is_file()
        assert e["label"] in CLASSES and e["explained"] == e["label"]
        assert 0 <= e["peak"][0] < SIZE and 0 <= e["peak"][1] < SIZE
    code, out, _ = run_main(
        capsys, "explain", str(run), str(good[0]), "-o", str(out_dir), "--class", "scratches"
    )
    assert code == 0 and f"-> {out_dir}" in out


def test_score_json_against_independent_box_areas(neu_run, tmp_path: Path, capsys) -> None:
    data, boxes, run = neu_run
    code, out, _ = run_main(
        capsys, "explain", str(run), "--data", str(data), "--score", "--json", "-o", str(tmp_path)
    )
    assert code == 0
    r = json.loads(out)
    saved = json.loads((tmp_path / "localisation.json").read_text())
    assert r.pop("file") == str(tmp_path / "localisation.json")
    assert r == saved
    test_files = json.loads((run / "split.json").read_text())["test"]
    assert r["n"] == len(test_files) == 20 and r["skipped_without_boxes"] == 0
    assert r["split_source"] == "the run's split.json" and r["layer"] == "features.1"
    assert r["image_size"] == [SIZE, SIZE] and r["target"] == "true"
    for name in CLASSES:
        stems = [Path(f).stem for f in test_files if Path(f).stem.startswith(name)]
        want = np.mean([(PATCH * PATCH) / SIZE**2 for _ in stems])
        assert r["per_class"][name]["n"] == len(stems)
        assert r["per_class"][name]["baseline"]["mass_uniform"] == pytest.approx(want)
        centre = [
            boxes[s][0] <= SIZE // 2 + 1 <= boxes[s][2]
            and boxes[s][1] <= SIZE // 2 + 1 <= boxes[s][3]
            for s in stems
        ]
        assert r["per_class"][name]["baseline"]["pointing_centre"] == pytest.approx(np.mean(centre))
        assert 0 <= r["per_class"][name]["pointing"] <= 1
    # the text table, written by default into the run folder
    shutil.rmtree(run / "explain-test", ignore_errors=True)
    code, out, _ = run_main(capsys, "explain", str(run), "--data", str(data), "--score", "--quiet")
    assert code == 0 and "class mean" in out and "pointing" in out
    assert (run / "explain-test" / "localisation.json").is_file()


def test_report_is_self_contained_and_escaped(neu_run, tmp_path: Path, capsys) -> None:
    data, _, run = neu_run
    odd = tmp_path / "run <b>&"  # names from the run folder must be escaped
    shutil.copytree(run, odd)
    page = tmp_path / "report.html"
    code, out, _ = run_main(
        capsys, "report", str(odd), "-o", str(page), "--data", str(data), "--json"
    )
    assert code == 0
    html = page.read_text()
    # curves, confusion matrix, misclassified, kernels, Grad-CAM grid
    assert json.loads(out)["images"] == html.count("<img ") == 5
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href=|url\(|<script|<link|https?://)", html)
    assert "run &lt;b&gt;&amp;" in html and "run <b>&" not in html
    for text in (
        "Training settings",
        "Confusion matrix",
        "Misclassified",
        "kernels",
        "Grad-CAM",
        "Localisation",
        "precision",
    ):
        assert text in html, text
    # without data: what the folder holds (curves and kernels; no evaluation figures yet)
    code, out, _ = run_main(capsys, "report", str(run), "-o", str(tmp_path / "plain.html"))
    assert code == 0 and "2 images" in out


def test_bad_input_is_one_line_exit_2(neu_run, tmp_path: Path, capsys, cli) -> None:
    data, _, run = neu_run
    image = str(data / "IMAGES" / "patches_1.png")
    proc = cli("show", "kernels", str(tmp_path / "nope"), "-o", str(tmp_path / "k.png"))
    one_line_error(proc.returncode, proc.stderr, "no such run folder")
    cases = [
        (("explain", str(run)), "give image files"),
        (("explain", str(run), "--score"), "--score needs --data"),
        (("explain", str(run), image), "-o DIR is needed"),
        (("explain", str(run), image, "-o", str(tmp_path), "--class", "cat"), "no class 'cat'"),
        (("explain", str(run), image, "-o", str(tmp_path), "--layer", "fc9"), "no layer 'fc9'"),
        (("explain", str(run), image, "-o", str(tmp_path), "--alpha", "2"), "--alpha"),
        (("show", "features", str(run), image, "-o", "f.png", "--layer", "fc1"), "does not output"),
        (("show", "features", str(run), str(tmp_path / "x.png"), "-o", "f.png"), "no such file"),
        (("report", str(run), "-o", str(tmp_path / "r.html"), "--gradcams", "-1"), "--gradcams"),
    ]
    for args, needle in cases:
        code, _, err = run_main(capsys, *args)
        one_line_error(code, err, needle)
    bars = tmp_path / "bars"  # class folders, no boxes
    for c in CLASSES:
        write_image(bars / c / "a.png", np.zeros((SIZE, SIZE), np.uint8))
    code, _, err = run_main(
        capsys, "explain", str(run), "--data", str(bars), "--score", "--split", "all"
    )
    one_line_error(code, err, "no annotated boxes")
