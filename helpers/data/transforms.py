"""What a model expects of an image (`ImageSpec`) and the transforms that give it that (lessons 03 and 04).

Every pipeline ends in `to_model_input`: uint8 -> float in [0, 1] -> normalised like pretraining.
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
from helpers.data.images import LabeledImages


@dataclass(frozen=True)
class ImageSpec:
    """What a model expects: image size (height, width) and the normalisation of its pretraining (lesson 03)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> "ImageSpec":
        """Read size, mean and std from a transformers image processor (e.g. ViTImageProcessor)."""
        size = processor.size
        height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        return cls((height, width), tuple(processor.image_mean), tuple(processor.image_std))


def to_model_input(spec: ImageSpec) -> v2.Compose:
    """The shared last step of every pipeline: uint8 -> float in [0, 1] -> normalised like pretraining (lesson 03)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])


def eval_transform(spec: ImageSpec) -> v2.Compose:
    """Resize to the model's size, then `to_model_input`: what evaluation (and no augmentation) uses (lesson 03)."""
    return v2.Compose([v2.Resize(spec.size, antialias=True), to_model_input(spec)])


def channel_mean_std(dataset: LabeledImages, max_images: int | None = None) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation over every pixel of the raw images, on the [0, 1] scale (lesson 03)."""
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise ValueError("The dataset is empty: there is nothing to average.")
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for index in range(count):
        image = dataset.image(index).to(torch.float64) / 255
        total += image.sum((1, 2))
        squares += (image**2).sum((1, 2))
        pixels += image[0].numel()
    mean = total / pixels
    std = (squares / pixels - mean**2).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
