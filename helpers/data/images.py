"""Datasets of labelled images: in memory (`TensorImages`) or read from files when asked (`FileImages`).

Every dataset yields `(transform(image), label)` where `image` is a uint8 tensor [3, H, W] (lesson 03).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm


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


def read_rgb(path: Path) -> torch.Tensor:
    """Decode an image file of any mode to a uint8 RGB tensor [3, H, W] (lesson 03)."""
    with Image.open(path) as image:
        return pil_to_rgb(image)


def pil_to_rgb(image: Image.Image) -> torch.Tensor:
    """A PIL image of any mode (L, P, RGBA, CMYK, ...) as a uint8 RGB tensor [3, H, W] (lesson 03)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
