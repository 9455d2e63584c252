"""The HTTP service through FastAPI's test client: answers, audit trail, limits, bad input.

References: `predict_files` on the same bytes written to disk (the CLI's answer), hashlib for
the audit trail's SHA-256, Pillow-made PNGs for the bad and oversized uploads.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train_helpers import CLASSES, bar_image, train_tiny_run

from cnnlab.errors import CnnlabError
from cnnlab.predict import predict_files

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient

from cnnlab.serve import create_app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes]]:
    """Six bar images as upload bytes: PNG and JPEG, 16x16 gray and 32x32 RGB."""
    rng, out = np.random.default_rng(11), []
    for i in range(6):
        arr = bar_image(i % 3, 16, rng)
        if i >= 3:
            arr = np.repeat(np.kron(arr, np.ones((2, 2), np.uint8))[..., None], 3, axis=2)
        out.append((f"{CLASSES[i % 3]}-{i}.png", png_bytes(arr)))
    return out


@pytest.fixture(scope="module")
def client(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    app = create_app(tiny_run, audit_log=audit, max_upload_bytes=200_000, max_pixels=1_000_000)
    return TestClient(app)


def multipart(uploads, ctype: str = "image/png"):
    """Form fields for TestClient; an upload may carry its own content type as a 3rd item."""
    return [("files", (u[0], u[1], u[2] if len(u) > 2 else ctype)) for u in uploads]


def reference(tiny_run: Path, uploads, tmp_path: Path) -> list[dict]:
    """What `cnnlab predict` answers for the same bytes written as files."""
    files = []
    for name, data in uploads:
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    return predict_files(tiny_run, files, device="cpu")


def test_predict_answers_like_cnnlab_predict(client, tiny_run, images, tmp_path) -> None:
    r = client.post("/predict", files=multipart(images))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = reference(tiny_run, images, tmp_path)
    assert len(body["predictions"]) == len(images)
    for got, want, (name, data) in zip(body["predictions"], ref, images, strict=True):
        assert got["file"] == name and got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["probability"] == pytest.approx(max(want["probabilities"].values()), abs=1e-6)
        assert got["uncertain"] is False  # no --reject-below
        assert 0 < got["seconds"] < body["seconds"] + 1e-6
        assert got["image_sha256"] == hashlib.sha256(data).hexdigest()
    model_file = tiny_run / "model.safetensors"
    assert body["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_health_model_docs_and_page(client, tiny_run) -> None:
    from cnnlab import __version__

    assert client.get("/health").json()["status"] == "ok"
    m = client.get("/model").json()
    assert m["classes"] == list(CLASSES) and m["input"]["shape"] == [1, 16, 16]
    assert m["version"] == __version__ and m["backend"] == "torch"
    assert m["limits"]["max_pixels"] == 1_000_000
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert "swagger" in client.get("/docs").text.lower()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="file"' in html and "/predict" in html and "gradcam_png" in html
    assert "http://" not in html and "https://" not in html  # no CDN, works offline


def test_reject_below_marks_uncertain(tiny_run, images, tmp_path) -> None:
    probs = [max(p["probabilities"].values()) for p in reference(tiny_run, images, tmp_path)]
    cut = float(np.median(probs))
    c = TestClient(create_app(tiny_run, reject_below=cut))
    got = c.post("/predict", files=multipart(images)).json()["predictions"]
    assert [g["uncertain"] for g in got] == [p < cut for p in probs]
    assert any(g["uncertain"] for g in got) and not all(g["uncertain"] for g in got)
    assert c.get("/model").json()["reject_below"] == cut
    with pytest.raises(CnnlabError, match="--reject-below"):
        create_app(tiny_run, reject_below=1.5)


def test_audit_trail_one_line_per_decision(tiny_run, images, tmp_path) -> None:
    log = tmp_path / "logs" / "audit.jsonl"
    c = TestClient(create_app(tiny_run, audit_log=log, reject_below=0.5))
    c.post("/predict", files=multipart(images[:2]))
    c.post("/predict", files=multipart(images[2:3]))
    c.post("/predict", files=multipart([("x.txt", b"hello")], "text/plain"))  # refused: no line
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 3
    model_sha = hashlib.sha256((tiny_run / "model.safetensors").read_bytes()).hexdigest()
    ref = reference(tiny_run, images[:3], tmp_path)
    for rec, (_, data), want in zip(lines, images[:3], ref, strict=True):
        assert rec["image_sha256"] == hashlib.sha256(data).hexdigest()
        assert rec["model_sha256"] == model_sha
        assert rec["label"] == want["label"]
        assert rec["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert rec["uncertain"] == (max(want["probabilities"].values()) < 0.5)
        assert datetime.fromisoformat(rec["time"]).tzinfo is not None
    # appended, never truncated: a new server on the same log keeps the old lines
    c2 = TestClient(create_app(tiny_run, audit_log=log))
    c2.post("/predict", files=multipart(images[:1]))
    assert len(log.read_text().splitlines()) == 4


def test_bad_uploads_are_refused_and_the_server_stays_up(client, images) -> None:
    good = images[0]
    rgb = np.zeros((1200, 1000, 3), np.uint8)  # 1.2 Mpx > max_pixels, tiny as a PNG
    cases = [
        ([("notes.txt", b"just text")], "text/plain", 415, "only image uploads"),
        ([("fake.png", b"\x00" * 100)], "image/png", 415, "not an image"),
        ([("cut.png", good[1][: len(good[1]) // 2])], "image/png", 422, "truncated"),
        ([("empty.png", b"")], "image/png", 422, "empty"),
        ([("big.png", png_bytes(rgb))], "image/png", 413, "pixels"),
        ([("huge.bin", b"\x89PNG" + b"\x00" * 300_000)], "application/octet-stream", 413, "bytes"),
        ([good] * 17, "image/png", 413, "at most 16"),
        ([good, ("notes.txt", b"x", "text/plain")], "image/png", 415, "notes.txt"),
    ]
    for uploads, ctype, status, words in cases:
        r = client.post("/predict", files=multipart(uploads, ctype))
        assert r.status_code == status, (uploads[0][0], r.text)
        assert words in r.json()["detail"], r.json()
    r = client.post("/predict", content=b"raw bytes", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files=multipart([good])).status_code == 200


def test_decompression_bomb_is_refused_undecoded(tiny_run) -> None:
    """An 8000x8000 PNG of zeros: ~60 KiB on the wire, 64 Mpx decoded (default limit 25)."""
    bomb = png_bytes(np.zeros((8000, 8000), np.uint8))
    assert len(bomb) < 100_000
    c = TestClient(create_app(tiny_run))
    t0 = time.perf_counter()
    r = c.post("/predict", files=multipart([("bomb.png", bomb)]))
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    assert time.perf_counter() - t0 < 5  # refused from the header, not decoded


def test_request_body_cap(tiny_run) -> None:
    c = TestClient(create_app(tiny_run, max_upload_bytes=1000, max_files=2))
    big = b"\x00" * 300_000  # more than 2 x (1000 + 64 KiB of form overhead)
    r = c.post("/predict", content=big, headers={"content-type": "multipart/form-data; b=x"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert c.get("/health").status_code == 200


def test_model_loaded_once_and_concurrency_bounded(
    tiny_run, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.serve.service as service

    loads, active, peak, lock = [], [0], [0], threading.Lock()
    real_load = service.load_predictor

    def counting_load(*args, **kwargs):
        p = real_load(*args, **kwargs)
        loads.append(p)
        real_logits = p.logits

        def slow_logits(x):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)  # long enough for the other requests to pile up
            try:
                return real_logits(x)
            finally:
                with lock:
                    active[0] -= 1

        p.logits = slow_logits
        return p

    monkeypatch.setattr(service, "load_predictor", counting_load)
    with TestClient(create_app(tiny_run, max_concurrency=2)) as c:
        codes = []

        def post() -> None:
            codes.append(c.post("/predict", files=multipart(images[:1])).status_code)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200] * 8
    assert len(loads) == 1  # one model for every request
    assert peak[0] == 2  # requests overlapped, but never more than max_concurrency


def test_onnx_backend_serves_the_same_answers(client, tiny_run, images, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from cnnlab.export import export_model

    onnx_file = export_model(tiny_run, tmp_path / "m.onnx", n_check=4)["path"]
    c = TestClient(create_app(onnx_file))
    a = client.post("/predict", files=multipart(images)).json()["predictions"]
    b = c.post("/predict?gradcam=1", files=multipart(images)).json()
    assert c.get("/model").json()["backend"] == "onnx"
    for x, y in zip(a, b["predictions"], strict=True):
        assert x["label"] == y["label"]
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)
        assert "gradcam_png" not in y
    assert "PyTorch" in b["gradcam"]  # why there is no overlay


def test_gradcam_overlay_when_explain_exists(tiny_run, images) -> None:
    pytest.importorskip("cnnlab.explain")
    c = TestClient(create_app(tiny_run))
    assert c.get("/model").json()["gradcam"] is True
    r = c.post("/predict?gradcam=1", files=multipart(images[:2])).json()["predictions"]
    import base64

    for p in r:
        img = Image.open(io.BytesIO(base64.b64decode(p["gradcam_png"])))
        assert img.format == "PNG" and img.mode == "RGB"
    plain = c.post("/predict", files=multipart(images[:1])).json()["predictions"][0]
    assert "gradcam_png" not in plain


def test_cli_serve_help_and_bad_options(tiny_run, capsys) -> None:
    from cnnlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--reject-below" in capsys.readouterr().out
    assert main(["serve", str(tiny_run), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tiny_run), "--max-files", "0", "--port", "8765"]) == 2
    assert "--max-files must be a positive integer" in capsys.readouterr().err
