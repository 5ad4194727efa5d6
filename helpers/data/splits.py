"""Train / validation / test splits (lesson 03): stratified and seeded, checked for leaks across splits."""
from __future__ import annotations

import hashlib
import math
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
from helpers.data.folders import file_hash
from helpers.data.images import FileImages, LabeledImages


SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    """Train, validation and test sets of one dataset, with its class names (lesson 03)."""

    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    classes: list[str]
    source: str = ""

    def with_transforms(self, train, eval=None) -> "Splits":
        """The splits with `train` applied to the training set and `eval` (default: `train`) to the others."""
        eval = eval or train
        return replace(self, train=self.train.with_transform(train), val=self.val.with_transform(eval),
                       test=self.test.with_transform(eval))

    def __str__(self) -> str:
        return (f"{self.source}: {len(self.classes)} classes; train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)} images")


def stratified_split(labels, val_fraction: float, test_fraction: float, seed: int):
    """Indices (train, val, test): seeded, stratified by label, disjoint, covering every item (lesson 03)."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    labels = np.asarray(labels)
    val_size, test_size = (_count_of(fraction, len(labels)) for fraction in (val_fraction, test_fraction))
    rest, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=labels[rest], random_state=seed)
    return sorted(train), sorted(val), sorted(test)


def _count_of(fraction: float, total: int) -> int:
    """`fraction` of `total` items as a count, rounded up like sklearn's split sizes, without float noise
    (0.07 * 100 is 7.000000000000001, which must stay 7)."""
    return math.ceil(round(fraction * total, 9))


def stratified_subset(dataset: LabeledImages, size: int | None, seed: int) -> LabeledImages:
    """At most `size` items of `dataset`, keeping the class balance (None: all of it) (lesson 03)."""
    if size is None or size >= len(dataset):
        return dataset
    classes = len(set(dataset.labels))
    if size < classes:
        raise ValueError(f"A subset of {size} images cannot hold all {classes} classes: ask for more.")
    left_out = len(dataset) - size
    if left_out < classes:  # too few to leave one of each class out, as sklearn's stratified draw would
        labels = np.asarray(dataset.labels)
        largest = np.argsort(-np.bincount(labels), kind="stable")[:left_out]
        rng = np.random.default_rng(seed)
        dropped = {int(rng.choice(np.flatnonzero(labels == label))) for label in largest}
        return dataset.subset([i for i in range(len(dataset)) if i not in dropped])
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=size, stratify=dataset.labels, random_state=seed)
    return dataset.subset(sorted(keep))


def split_dataset(dataset: LabeledImages, source: str, seed: int, val_fraction=0.15, test_fraction=0.15) -> Splits:


    """`dataset` split 70/15/15 by `stratified_split` into `Splits` (lesson 03)."""
    train, val, test = stratified_split(dataset.labels, val_fraction, test_fraction, seed)
    return Splits(dataset.subset(train), dataset.subset(val), dataset.subset(test), dataset.classes, source)


@dataclass
class Leak:
    """One item found in two splits: by the same file, or by identical content under another name (lesson 03)."""

    kind: str
    first: str
    second: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.first} and {self.second}"


@dataclass
class LeakageReport:
    """The leaks between train, val and test, and how many items each split holds (lesson 03)."""

    leaks: list[Leak]
    sizes: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.leaks

    def __str__(self) -> str:
        checked = ", ".join(f"{name} {size}" for name, size in self.sizes.items())
        if self.ok:
            return f"no leaks: no file and no identical content in two splits ({checked})"
        lines = [f"{len(self.leaks)} leak(s) between splits ({checked}):"]
        lines += [f"  {leak}" for leak in self.leaks[:10]]
        if len(self.leaks) > 10:
            lines.append(f"  ... and {len(self.leaks) - 10} more")
        return "\n".join(lines)


def content_hash(dataset: LabeledImages, index: int) -> str:
    """sha256 of item `index`: its file's bytes for images on disk, its pixels (and shape) otherwise (lesson 03)."""
    if isinstance(dataset, FileImages):
        return file_hash(dataset.paths[index])
    image = dataset.image(index).contiguous()
    return hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest()


def find_leaks(splits: Splits) -> LeakageReport:
    """Every item of val or test that is also in an earlier split: the same file, or the same content (lesson 03)."""
    first_seen: dict[tuple[str, str], str] = {}
    leaks = []
    for split_name in SPLIT_NAMES:
        dataset = getattr(splits, split_name)
        for index in range(len(dataset)):
            item = describe_item(split_name, dataset, index)
            keys = [("same file", str(dataset.paths[index].resolve()))] if isinstance(dataset, FileImages) else []
            keys.append(("same content", content_hash(dataset, index)))
            for kind, key in keys:
                seen = first_seen.setdefault((kind, key), item)
                if not seen.startswith(split_name + " "):
                    leaks.append(Leak(kind, seen, item))
                    break
    return LeakageReport(leaks, {name: len(getattr(splits, name)) for name in SPLIT_NAMES})


def describe_item(split_name: str, dataset: LabeledImages, index: int) -> str:


    """A short description of item `index` of a split, for a leak report (lesson 03)."""
    if isinstance(dataset, FileImages):
        return f"{split_name} {Path(*dataset.paths[index].parts[-2:])}"
    return f"{split_name} #{index}"


def class_counts(dataset: LabeledImages) -> np.ndarray:
    """Images per class, in class order (zeros included) (lesson 03)."""
    return np.bincount(dataset.labels, minlength=len(dataset.classes))
