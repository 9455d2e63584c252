"""The real MNIST and NEU-DET (skipped with a reason unless CNNLAB_DATA is set)."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data import NEU_CLASSES, load_dataset, verify_mnist
from cnnlab.data.mnist import MNIST_MD5, read_idx

pytestmark = pytest.mark.realdata


def test_real_mnist(real_data):
    assert verify_mnist(real_data / "mnist") == MNIST_MD5
    ds = load_dataset(real_data / "mnist", progress=False)
    assert len(ds.split("train")) == 60000 and len(ds.split("test")) == 10000
    test = ds.split("test")
    raw = read_idx(real_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(test.images[1495, 0], torch.from_numpy(raw[1495].copy()))
    assert test.files[1495] == "t10k-images-idx3-ubyte[1495]"
    # published MNIST facts, independent of the reader: class counts and first labels
    train = ds.split("train")
    assert torch.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(test.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert int(train.labels[0]) == 5 and int(test.labels[0]) == 7
    assert ds.class_names == [str(d) for d in range(10)]


def test_real_neu_det(real_data):
    ds = load_dataset(real_data / "neu-det", progress=False)
    assert ds.layout == "neu-det" and ds.class_names == NEU_CLASSES
    assert ds.images.shape == (1440, 1, 200, 200)
    assert torch.bincount(ds.labels).tolist() == [240] * 6
    assert len(ds.split("train")) == 1152 and len(ds.split("test")) == 288
    assert len(ds.boxes) == 1440 and all(len(b) >= 1 for b in ds.boxes.values())
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
               for bs in ds.boxes.values() for x0, y0, x1, y1 in bs)  # fmt: skip
    again = load_dataset(real_data / "neu-det", progress=False)  # from the cache
    assert torch.equal(again.images, ds.images)
