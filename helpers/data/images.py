"""Datasets of labelled images: in memory (`TensorImages`) or read from files when asked (`FileImages`).

Every dataset yields `(transform(image), label)` where `image` is a uint8 tensor [3, H, W] (lesson 03).
Files are read through the photo I/O of lesson 07 (`helpers.data.photos`): upright, scaled, composited.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from helpers.data.photos import prepare, read_photo, to_rgb8


class LabeledImages(Dataset):
    """Images with integer labels and class names; a per-sample transform is applied in `__getitem__` (lesson 03)."""

    def __init__(self, labels, classes, transform=None):
        self.labels = [int(label) for label in labels]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = tv_tensors.Image(self.image(index))
        return (self.transform(image) if self.transform else image), self.labels[index]

    def image(self, index: int) -> torch.Tensor:
        """The raw image `index` as a uint8 tensor [3, H, W]."""
        raise NotImplementedError

    def with_transform(self, transform) -> "LabeledImages":
        """A copy that applies `transform` to each image."""
        copy = self.subset(range(len(self)))
        copy.transform = transform
        return copy

    def subset(self, indices) -> "LabeledImages":
        raise NotImplementedError


class TensorImages(LabeledImages):
    """Images held in memory as one uint8 tensor [N, 3, H, W] (lesson 03)."""

    def __init__(self, images: torch.Tensor, labels, classes, transform=None):
        super().__init__(labels, classes, transform)
        self.images = images

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def subset(self, indices) -> "TensorImages":
        indices = list(indices)
        return TensorImages(self.images[indices], [self.labels[i] for i in indices], self.classes, self.transform)


class FileImages(LabeledImages):
    """Images read from files when asked for; any mode (L, P, RGBA, CMYK, ...) becomes RGB (lesson 03)."""

    def __init__(self, paths, labels, classes, transform=None):
        super().__init__(labels, classes, transform)
        self.paths = [Path(p) for p in paths]

    def image(self, index: int) -> torch.Tensor:
        return read_rgb(self.paths[index])

    def subset(self, indices) -> "FileImages":
        indices = list(indices)
        return FileImages([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes,
                          self.transform)

    def prepared(self, short_side: int, cache_dir: str | os.PathLike, progress: bool = True) -> "FileImages":
        """The same images decoded once into a cache of small PNGs (`helpers.data.photos.prepare`) (lesson 07)."""
        cached = prepare(self.paths, short_side, cache_dir, progress)
        return FileImages(cached, self.labels, self.classes, self.transform)


def read_rgb(path: Path) -> torch.Tensor:
    """Decode an image file of any mode to a uint8 RGB tensor [3, H, W], upright and scaled (lessons 03 and 07)."""
    return read_photo(path)


def pil_to_rgb(image: Image.Image) -> torch.Tensor:
    """A PIL image of any mode (L, P, RGBA, CMYK, I;16, ...) as a uint8 RGB tensor [3, H, W] (lessons 03 and 07)."""
    return to_rgb8(image)
