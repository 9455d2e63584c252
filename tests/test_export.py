"""Export (ONNX, TorchScript) and the backends: an exported model answers like the trained one.

The reference is a plain PyTorch forward pass on pixels decoded by Pillow and divided by 255,
independent of cnnlab's preprocessing and backends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_helpers import CLASSES, bar_image, bars_dataset, train_tiny_run

from cnnlab.backends import load_predictor
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import evaluate_model
from cnnlab.export import export_model
from cnnlab.images import write_image
from cnnlab.predict import predict_files
from cnnlab.train import load_model
from cnnlab.train.checkpoint import update_model_meta

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def bar_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Image files of every class, some at another size and in RGB (resized, made gray)."""
    root, rng = tmp_path_factory.mktemp("bars"), np.random.default_rng(7)
    files = []
    for i in range(12):
        img = bar_image(i % 3, 16, rng)
        if i % 4 == 3:  # 32x32 RGB: the preprocessing must resize and convert it
            img = np.repeat(np.kron(img, np.ones((2, 2), np.uint8))[..., None], 3, axis=2)
        files.append(write_image(root / CLASSES[i % 3] / f"{i:02d}.png", img))
    return files


@pytest.fixture(scope="module")
def exported(tiny_run: Path, bar_files: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """The tiny run exported once per format (exports take seconds), with its reports."""
    out = tmp_path_factory.mktemp("export")
    return {
        fmt: export_model(tiny_run, out / f"tiny{SUFFIX[fmt]}", images=bar_files) for fmt in SUFFIX
    }


def _reference_probs(run: Path, files: list[Path]) -> np.ndarray:
    """Independent path: PIL decode to gray 16x16, float / 255, plain forward, softmax at the
    temperature model.json stores."""
    model, _ = load_model(run)
    t = json.loads((run / "model.json").read_text()).get("calibration", {}).get("temperature", 1)
    x = np.stack(
        [
            np.asarray(Image.open(f).convert("L").resize((16, 16), Image.BILINEAR), np.float32)
            for f in files
        ]
    )
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x / 255)[:, None]) / t, 1).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_report_and_file(exported: dict, tiny_run: Path, fmt: str) -> None:
    r = exported[fmt]
    path = Path(r["path"])
    assert path.is_file() and r["format"] == fmt and r["bytes"] == path.stat().st_size
    c = r["check"]
    assert c["passed"] and c["images"] == "12 image file(s)" and c["n"] == 12
    assert c["labels_agree"] == 12
    assert 0 <= c["max_abs_diff_probs"] <= 1e-4 and c["max_abs_diff_logits"] < 1e-3
    # no temporary file left beside the output
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_onnx_graph_metadata_and_dynamic_batch(exported: dict, tiny_run: Path) -> None:
    path = exported["onnx"]["path"]
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    _, meta = load_model(tiny_run)
    props = {p.key: p.value for p in proto.metadata_props}
    embedded = json.loads(props["cnnlab_model"])
    assert embedded["class_names"] == list(CLASSES) == json.loads(props["class_names"])
    assert embedded["input"] == meta["input"] == json.loads(props["input"])
    assert embedded["input"]["normalisation"]["scale"] == pytest.approx(1 / 255)
    assert embedded["export"]["input_name"] == "image"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 16, 16]
    # onnxruntime directly (no cnnlab code) at batch 1 and 7 equals the PyTorch model
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model, _ = load_model(tiny_run)
    for n in (1, 7):
        x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(n))
        (got,) = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_gives_the_same_output_for_every_backend(
    exported: dict, tiny_run: Path, bar_files: list[Path], fmt: str
) -> None:
    ref = _reference_probs(tiny_run, bar_files)
    by_torch = predict_files(tiny_run, bar_files, top_k=3, device="cpu")
    by_export = predict_files(exported[fmt]["path"], bar_files, top_k=3)
    for a, b, p in zip(by_torch, by_export, ref, strict=True):
        assert a["file"] == b["file"] and a["true_label"] == b["true_label"]
        assert a["label"] == b["label"] == CLASSES[int(p.argmax())]
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        got = np.array([b["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, p, atol=1e-5)
        np.testing.assert_allclose(
            got, np.array([a["probabilities"][c] for c in CLASSES]), atol=1e-5
        )


def test_evaluate_accepts_onnx_with_the_same_report(exported: dict, tiny_run: Path, tmp_path):
    ds = bars_dataset(seed=3)
    a = evaluate_model(tiny_run, ds, out_dir=tmp_path / "a", device="cpu", progress=False)
    b = evaluate_model(exported["onnx"]["path"], ds, out_dir=tmp_path / "b", progress=False)
    assert a["n"] == b["n"] == 48 and a["model"] != b["model"]
    floats = ("ece", "ece_uncalibrated")  # from probabilities: equal to float precision
    same = {k for k in a if k not in ("model", "plots", "reliability", *floats)}
    assert {k: a[k] for k in same} == {k: b[k] for k in same}  # metrics, matrix, split
    for k in floats:
        assert (k in a) == (k in b) and a.get(k) == pytest.approx(b.get(k), abs=1e-6)
    assert a["reliability"].keys() == b["reliability"].keys()
    for name, ra in a["reliability"].items():  # mean confidences rounded to 6 places: may
        rb = b["reliability"][name]  # differ in the last one between torch and onnxruntime
        assert ra["edges"] == rb["edges"] and ra["count"] == rb["count"]
        assert ra["accuracy"] == rb["accuracy"]
        for ca, cb in zip(ra["confidence"], rb["confidence"], strict=True):
            assert (ca is None) == (cb is None) and (
                ca is None or ca == pytest.approx(cb, abs=2e-6)
            )
    assert (tmp_path / "b" / "confusion_matrix.png").is_file()


def test_predictor_logits_match_for_a_uint8_batch(exported: dict, tiny_run: Path) -> None:
    images = torch.from_numpy(
        np.stack([bar_image(i % 3, 16, np.random.default_rng(i)) for i in range(9)])[:, None]
    )
    ref = load_predictor(tiny_run, device="cpu")
    assert ref.backend == "torch" and ref.path.name == "model.safetensors"
    for fmt in SUFFIX:
        p = load_predictor(exported[fmt]["path"])
        assert p.backend == fmt and p.meta["class_names"] == ref.meta["class_names"]
        torch.testing.assert_close(p.logits(images), ref.logits(images), rtol=1e-4, atol=1e-5)
        with pytest.raises(CnnlabError, match="--threads must be a positive integer"):
            load_predictor(exported[fmt]["path"], threads=0)  # every backend refuses it


def test_mirror_tta_is_stored_applied_and_exported(tmp_path: Path) -> None:
    """A run trained with --augment flips --tta stores "flips"; every backend averages the
    log-softmax over the 4 mirrors and never over the 90-degree turns."""
    run = train_tiny_run(tmp_path / "run", epochs=1, augment="flips", tta=True)
    model, meta = load_model(run)
    assert meta["tta"] == "flips"
    images = torch.from_numpy(
        np.stack([bar_image(i % 3, 16, np.random.default_rng(i)) for i in range(6)])[:, None]
    )
    x = images.float() / 255
    with torch.no_grad():  # the reference: plain forward passes on the 4 mirrors
        views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
        ref = torch.stack([torch.log_softmax(model(v), 1) for v in views]).mean(0)
    torch.testing.assert_close(load_predictor(run, device="cpu").logits(images), ref)
    onnx_file = export_model(run, tmp_path / "m.onnx")["path"]
    got = load_predictor(onnx_file).logits(images)
    assert load_predictor(onnx_file).meta["tta"] == "flips"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    update_model_meta(run, tta="sideways")  # a hand-edited model file: one clear error
    with pytest.raises(CnnlabError, match=r'malformed .*"tta" must be'):
        load_predictor(run, device="cpu")


def test_torch_backend_runs_float32_even_where_training_uses_bf16(
    tiny_run: Path, bar_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU where bf16 is faster training autocasts; predictions and the export check must
    still be float32, or the check fails (0.033 on seed-neu) and probabilities move."""
    import cnnlab.precision as precision
    import cnnlab.runtime as runtime

    monkeypatch.setattr(precision, "bf16_choice", lambda threads: (True, "bf16 autocast"))
    assert runtime.setup("cpu").amp_dtype == torch.bfloat16  # what training would use here
    assert load_predictor(tiny_run, device="cpu").runtime.amp_dtype is None
    r = export_model(tiny_run, tmp_path / "m.onnx", images=bar_files, atol=1e-5)
    assert r["check"]["passed"] and r["check"]["max_abs_diff_probs"] <= 1e-5


def test_a_disagreeing_export_is_refused_and_not_written(
    tiny_run: Path, bar_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export a model whose weights differ from the run's: the check must catch it."""
    import cnnlab.export as export

    def perturbed(src):
        model, meta = load_model(src)
        with torch.no_grad():
            model.fc2.bias += torch.tensor([3.0, -3.0, 0.0])
        return model, meta

    monkeypatch.setattr(export, "load_model", perturbed)
    out = tmp_path / "bad.onnx"
    with pytest.raises(CnnlabError, match="disagrees with PyTorch"):
        export_model(tiny_run, out, images=bar_files[:4])
    assert list(tmp_path.iterdir()) == []


def test_check_falls_back_to_random_images_with_a_note(tiny_run: Path, tmp_path: Path) -> None:
    """The tiny run was trained on in-memory data: no real images to find, a visible note."""
    r = export_model(tiny_run, tmp_path / "m.pt", n_check=5)
    assert r["format"] == "torchscript" and r["check"]["n"] == 5
    assert "random images" in r["check"]["images"] and "--images" in r["check"]["images"]


def test_user_errors_are_one_line(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CnnlabError, match=r"suffix \.pt"):
        export_model(tiny_run, tmp_path / "m.onnx", format="torchscript")
    with pytest.raises(CnnlabError, match="--format"):
        export_model(tiny_run, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(CnnlabError, match="--check-images"):
        export_model(tiny_run, tmp_path / "m.onnx", n_check=0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(CnnlabError, match="not a readable ONNX model"):
        load_predictor(junk)
    with pytest.raises(CnnlabError, match="no such model file"):
        load_predictor(tmp_path / "missing.onnx")
    # a valid ONNX graph without cnnlab's metadata
    plain = tmp_path / "plain.onnx"
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    onnx.save(
        h.make_model(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [x], [y])), plain
    )
    with pytest.raises(CnnlabError, match="without cnnlab metadata"):
        load_predictor(plain)
    # the optional dependency missing: one line naming the extra
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[export\]'"):
        load_predictor(junk)


@pytest.mark.slow
def test_cli_export_and_predict(
    tiny_run: Path, exported: dict, bar_files: list[Path], tmp_path: Path, cli
) -> None:
    out = tmp_path / "m.pt"  # TorchScript: the quicker export; ONNX is exported by the fixture
    r = cli("export", str(tiny_run), "-o", str(out), "--images", *map(str, bar_files[:6]))
    assert r.returncode == 0, r.stderr
    assert "(torchscript," in r.stdout and "same label on 6/6" in r.stdout
    assert "largest difference" in r.stdout
    b = cli("predict", exported["onnx"]["path"], *map(str, bar_files[:6]), "--json")
    assert b.returncode == 0, b.stderr
    pa = predict_files(tiny_run, bar_files[:6], device="cpu")
    pb = json.loads(b.stdout)["predictions"]
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    for x, y in zip(pa, pb, strict=True):
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)


def test_cli_export_error_is_one_line(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from cnnlab.cli import main

    rc = main(["export", str(tiny_run), "--format", "torchscript", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("cnnlab: error: ")
    assert "suffix .pt" in err and not list(tmp_path.iterdir())


@pytest.mark.realdata
@pytest.mark.slow
def test_real_neu_files_agree_across_backends(
    real_data: Path, tiny_run: Path, exported: dict
) -> None:
    """Real 200x200 NEU JPEGs through the whole path (decode, gray, resize) on every backend."""
    files = sorted((real_data / "neu-det" / "IMAGES").glob("*.jpg"))[::120][:12]
    if not files:
        pytest.skip("no NEU-DET JPEGs under CNNLAB_DATA/neu-det/IMAGES")
    ref = _reference_probs(tiny_run, files)
    for src in (tiny_run, exported["onnx"]["path"], exported["torchscript"]["path"]):
        got = predict_files(src, files, top_k=1, device="cpu")
        probs = np.array([[r["probabilities"][c] for c in CLASSES] for r in got])
        assert [r["label"] for r in got] == [CLASSES[i] for i in ref.argmax(1)]
        np.testing.assert_allclose(probs, ref, atol=1e-5)
