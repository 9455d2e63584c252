"""IDX reading and the MNIST downloader (against a local HTTP server, never the internet)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import load_dataset
from cnnlab.data.mnist import MNIST_FILES, download_mnist, read_idx, verify_mnist
from cnnlab.errors import CnnlabError


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file built by hand from the format description (independent of read_idx)."""
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def make_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0):
    """Four small IDX files with random images and labels 0..9."""
    rng = np.random.default_rng(seed)
    parts = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, arr in parts.items():
        data = idx_bytes(arr)
        name = MNIST_FILES[role]
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return parts


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder_order_and_splits(tmp_path, gz):
    parts = make_mnist(tmp_path / "m", gz=gz)
    ds = load_dataset(tmp_path / "m", progress=False)
    assert ds.layout == "mnist"
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.images.shape == (17, 1, 28, 28)
    test = ds.split("test")
    np.testing.assert_array_equal(test.images[3, 0].numpy(), parts["test_images"][3])
    np.testing.assert_array_equal(test.labels.numpy(), parts["test_labels"])
    np.testing.assert_array_equal(ds.split("train").labels.numpy(), parts["train_labels"])
    assert test.files[3] == "t10k-images-idx3-ubyte[3]"
    assert ds.files[0] == "train-images-idx3-ubyte[0]"


def test_mnist_channels_and_size_use_preprocess(tmp_path):
    parts = make_mnist(tmp_path / "m")
    ds = load_dataset(tmp_path / "m", channels=3, size=(14, 14), progress=False)
    assert ds.images.shape == (17, 3, 14, 14)
    from PIL import Image

    ref = np.asarray(Image.fromarray(parts["train_images"][0]).resize((14, 14), Image.BILINEAR))
    for c in range(3):
        np.testing.assert_array_equal(ds.images[0, c].numpy(), ref)


def test_read_idx_known_answer(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    assert read_idx(p).tolist() == [[[1, 2, 3]], [[4, 5, 6]]]


def test_idx_wrong_magic_and_truncated(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]))  # float IDX
    with pytest.raises(CnnlabError, match=r"bad: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3])
    with pytest.raises(CnnlabError, match=r"short: truncated IDX file"):
        read_idx(short)
    gz = tmp_path / "trunc.gz"
    gz.write_bytes(gzip.compress(idx_bytes(np.zeros((40, 8, 8), np.uint8)))[:-20])
    with pytest.raises(CnnlabError, match=r"trunc\.gz: broken or truncated gzip"):
        read_idx(gz)


def test_mnist_label_count_mismatch(tmp_path):
    make_mnist(tmp_path / "m")
    name = MNIST_FILES["test_labels"]
    (tmp_path / "m" / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(CnnlabError, match=r"5 images but 4 labels"):
        load_dataset(tmp_path / "m", progress=False)


# --- the downloader, against a local server -------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve folders over HTTP on 127.0.0.1 (ephemeral port); yields a URL-maker."""
    servers = []

    def start(folder: Path) -> str:
        def handler(*a, **k):
            return _Handler(*a, directory=str(folder), **k)

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _md5s(parts):
    return {MNIST_FILES[r]: hashlib.md5(idx_bytes(a)).hexdigest() for r, a in parts.items()}


def test_download_falls_over_404_and_verifies(tmp_path, serve):
    parts = make_mnist(tmp_path / "mirror")
    empty = tmp_path / "empty"
    empty.mkdir()
    mirrors = [serve(empty), serve(tmp_path / "mirror")]  # the first answers 404
    out = tmp_path / "dl"
    files = download_mnist(out, mirrors=mirrors, md5=_md5s(parts), timeout=5, progress=False)
    assert sorted(p.name for p in files.values()) == sorted(f"{n}.gz" for n in MNIST_FILES.values())
    assert verify_mnist(out, md5=_md5s(parts)) == _md5s(parts)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    ds = load_dataset(out, progress=False)
    np.testing.assert_array_equal(ds.images[:12, 0].numpy(), parts["train_images"])


def test_download_wrong_checksum_and_truncated(tmp_path, serve):
    parts = make_mnist(tmp_path / "good")
    make_mnist(tmp_path / "other", seed=1)  # right format, different content
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    for f in (tmp_path / "good").iterdir():
        (trunc / f.name).write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    md5 = _md5s(parts)
    with pytest.raises(CnnlabError) as e:
        download_mnist(tmp_path / "dl", mirrors=[serve(tmp_path / "other"), serve(trunc)],
                       md5=md5, timeout=5, progress=False)  # fmt: skip
    msg = str(e.value)
    assert "MD5 of content" in msg and "truncated or not gzip" in msg and "\n" not in msg
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())
    # the good mirror after the two bad ones wins
    mirrors = [serve(tmp_path / "other"), serve(trunc), serve(tmp_path / "good")]
    download_mnist(tmp_path / "dl", md5=md5, timeout=5, progress=False, mirrors=mirrors)
    assert verify_mnist(tmp_path / "dl", md5=md5)


def test_download_offline_error(tmp_path):
    with pytest.raises(CnnlabError, match=r"could not download.*if offline"):
        download_mnist(tmp_path / "dl", mirrors=["http://127.0.0.1:9/"], timeout=2, progress=False)


def test_verify_detects_changed_content(tmp_path):
    parts = make_mnist(tmp_path / "m")
    md5 = _md5s(parts)
    md5[MNIST_FILES["train_labels"]] = "0" * 32
    with pytest.raises(CnnlabError, match=r"train-labels-idx1-ubyte.gz: MD5 of content"):
        verify_mnist(tmp_path / "m", md5=md5)
