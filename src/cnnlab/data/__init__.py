"""Datasets: every on-disk form of MNIST, NEU and user images -> one in-memory `ImageDataset`."""

from cnnlab.data.dataset import Box, ImageDataset

__all__ = ["Box", "ImageDataset"]
