"""Datasets: every on-disk form of MNIST, NEU and user images -> one in-memory `ImageDataset`."""

from cnnlab.data.dataset import Box, ImageDataset
from cnnlab.data.load import load_dataset, resolve_spec
from cnnlab.data.mnist import download_mnist, read_idx, verify_mnist
from cnnlab.data.neu import NEU_CLASSES, neu_class_name
from cnnlab.data.report import dataset_info, sample_grid

__all__ = [
    "NEU_CLASSES",
    "Box",
    "ImageDataset",
    "dataset_info",
    "download_mnist",
    "load_dataset",
    "neu_class_name",
    "read_idx",
    "resolve_spec",
    "sample_grid",
    "verify_mnist",
]
