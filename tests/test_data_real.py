"""The real MNIST and NEU-DET (skipped with a reason unless CNNLAB_DATA is set)."""

from __future__ import annotations

import time

import pytest
import torch

from cnnlab.data import NEU_CLASSES, load_dataset, verify_mnist
from cnnlab.data.mnist import MNIST_MD5, read_idx

pytestmark = pytest.mark.realdata


def test_real_mnist(real_data):
    assert verify_mnist(real_data / "mnist") == MNIST_MD5
    t = time.perf_counter()
    ds = load_dataset(real_data / "mnist", progress=False)
    assert time.perf_counter() - t < 10
    assert len(ds.split("train")) == 60000 and len(ds.split("test")) == 10000
    test = ds.split("test")
    raw = read_idx(real_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(test.images[1495, 0], torch.from_numpy(raw[1495].copy()))
    assert test.files[1495] == "t10k-images-idx3-ubyte[1495]"
    assert torch.bincount(ds.labels).sum() == 70000 and ds.num_classes == 10


def test_real_neu_det(real_data):
    ds = load_dataset(real_data / "neu-det", progress=False)
    assert ds.layout == "neu-det" and ds.class_names == NEU_CLASSES
    assert ds.images.shape == (1440, 1, 200, 200)
    assert torch.bincount(ds.labels).tolist() == [240] * 6
    assert len(ds.split("train")) == 1152 and len(ds.split("test")) == 288
    assert len(ds.boxes) == 1440 and all(len(b) >= 1 for b in ds.boxes.values())
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
               for bs in ds.boxes.values() for x0, y0, x1, y1 in bs)  # fmt: skip
    t = time.perf_counter()
    again = load_dataset(real_data / "neu-det", progress=False)
    assert time.perf_counter() - t < 5  # cached
    assert torch.equal(again.images, ds.images)
