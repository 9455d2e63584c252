"""predict (files -> labels) and evaluate (dataset -> metrics + plots) on a tiny trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from test_train_helpers import CLASSES, bar_image, bars_dataset, train_tiny_run

from cnnlab.data.dataset import ImageDataset
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import evaluate_model
from cnnlab.images import write_image
from cnnlab.predict import predict_files
from cnnlab.train import load_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


def _reference_probs(run: Path, files: list[Path]) -> np.ndarray:
    """Independent path: PIL decode, float /255, plain forward, softmax(logits / T)."""
    model, meta = load_model(run)
    t = meta["calibration"]["temperature"]  # fitted on the run's val split by train
    x = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255 for f in files])
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)[:, None]) / t, 1).numpy()


def _assert_probabilities(results: list[dict], ref: np.ndarray) -> None:
    """Each result's class probabilities equal the reference row."""
    for r, p in zip(results, ref, strict=True):
        got = np.array([r["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


def test_predict_files_match_a_plain_forward_pass(tiny_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    files = [write_image(tmp_path / f"{i}.png", bar_image(i % 3, 16, rng)) for i in range(6)]
    results = predict_files(tiny_run, files, top_k=2, device="cpu")
    ref = _reference_probs(tiny_run, files)
    _assert_probabilities(results, ref)
    for r, p in zip(results, ref, strict=True):
        assert r["label"] == CLASSES[int(p.argmax())]
        assert [t["label"] for t in r["top_k"]] == [CLASSES[i] for i in np.argsort(-p)[:2]]
        assert r["probability"] == pytest.approx(p.max(), rel=1e-5)
    assert sum(r["label"] == CLASSES[i % 3] for i, r in enumerate(results)) >= 5


def test_predict_files_on_one_thread_gives_the_same_answers(tiny_run: Path, tmp_path: Path):
    """`--threads 1` (a CPU shared with other software) changes the speed, not the result."""
    rng = np.random.default_rng(6)
    files = [write_image(tmp_path / f"{i}.png", bar_image(i % 3, 16, rng)) for i in range(4)]
    before = torch.get_num_threads()
    try:
        one = predict_files(tiny_run, files, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    _assert_probabilities(one, _reference_probs(tiny_run, files))
    with pytest.raises(CnnlabError, match="--threads must be a positive integer"):
        predict_files(tiny_run, files, threads=0)


def test_bad_file_is_reported_and_others_predicted(tiny_run: Path, tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", bar_image(0, 16, np.random.default_rng(0)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    results = predict_files(tiny_run, [good, bad, tmp_path / "missing.png"])
    assert "label" in results[0]
    assert "bad.png" in results[1]["error"] and "label" not in results[1]
    assert "no such file" in results[2]["error"]


def test_folder_input_converts_size_and_channels(tiny_run: Path, tmp_path: Path) -> None:
    """A 32x32 RGB image in a folder named after its class: resized, made gray, true label."""
    rng = np.random.default_rng(1)
    big = np.kron(bar_image(1, 16, rng), np.ones((2, 2), np.uint8))
    write_image(tmp_path / "vertical" / "a.png", np.repeat(big[..., None], 3, axis=2))
    write_image(tmp_path / "vertical" / "b.png", big)
    (tmp_path / "vertical" / "notes.txt").write_text("ignored")
    plot = tmp_path / "plot.png"
    results = predict_files(tiny_run, [tmp_path / "vertical"], plot=plot)
    assert [Path(r["file"]).name for r in results] == ["a.png", "b.png"]
    assert all(r["true_label"] == "vertical" for r in results)
    # RGB gray and plain gray give the same input, so the same probabilities
    assert results[0]["probabilities"] == pytest.approx(results[1]["probabilities"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_empty_folder_and_bad_top_k(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="no image files"):
        predict_files(tiny_run, [tmp_path])
    with pytest.raises(CnnlabError, match="--top-k"):
        predict_files(tiny_run, [tmp_path], top_k=0)


def test_evaluate_matches_sklearn_and_writes_plots(tiny_run: Path, tmp_path: Path) -> None:
    ds = bars_dataset(90, 16, seed=3)
    report = evaluate_model(tiny_run, ds, split="all", out_dir=tmp_path / "ev")
    model, _ = load_model(tiny_run)
    with torch.no_grad():
        pred = model(ds.images.float() / 255).argmax(1).numpy()
    y = ds.labels.numpy()
    assert report["n"] == 90
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for i, c in enumerate(CLASSES):
        assert report["per_class"][c]["precision"] == pytest.approx(p[i])
        assert report["per_class"][c]["recall"] == pytest.approx(r[i])
        assert report["per_class"][c]["f1"] == pytest.approx(f[i])
        assert report["per_class"][c]["support"] == s[i]
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / "ev" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_matches_classes_by_name(tiny_run: Path, tmp_path: Path) -> None:
    ds = bars_dataset(60, 16, seed=4)
    base = evaluate_model(tiny_run, ds, split="all", plots=False)
    # same images, classes listed in another order: labels re-mapped by name
    order = [2, 0, 1]  # new index of old class i
    shuffled = ImageDataset(
        ds.images,
        torch.tensor(order)[ds.labels],
        [CLASSES[1], CLASSES[2], CLASSES[0]],
        ds.files,
        splits=dict(ds.splits),
    )
    again = evaluate_model(tiny_run, shuffled, split="all", plots=False)
    assert again["accuracy"] == base["accuracy"]
    assert again["confusion_matrix"] == base["confusion_matrix"]
    wrong = ImageDataset(ds.images, ds.labels, ["h", "v", "d"], ds.files)
    with pytest.raises(CnnlabError, match="class names do not match"):
        evaluate_model(tiny_run, wrong, split="all", plots=False)


def test_evaluate_refuses_wrong_image_size(tiny_run: Path) -> None:
    ds = bars_dataset(30, 20)
    with pytest.raises(CnnlabError, match="the model wants"):
        evaluate_model(tiny_run, ds, split="all", plots=False)
