"""Datasets by name (lesson 03): `digits`, `cifar10`, `cifar100` and `imagefolder:<path>`, split and capped.

`digits` is scikit-learn's 8x8 digits upsampled to 32 px RGB (ships with scikit-learn, always
offline); CIFAR downloads once when online; an image folder has one subfolder of images per class.
Hugging Face `datasets` loads through `load_hf_dataset` when the optional extra is installed.
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
from helpers.data.folders import load_image_folder
from helpers.data.images import LabeledImages, TensorImages, pil_to_rgb
from helpers.data.splits import Splits, split_dataset, stratified_subset


DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder:<path>")


DEFAULT_ROOT = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "vit-course" / "data"))


HF_DATASETS_MISSING = (
    "Hugging Face `datasets` is not installed: install the optional extra with "
    "`pip install -e '.[datasets]'` (or `pip install datasets`) and rerun."
)


class HubImages(LabeledImages):
    """A Hugging Face `datasets.Dataset` with an image column and a ClassLabel column, as `LabeledImages` (lesson 03)."""

    def __init__(self, table, image_column: str, label_column: str, transform=None):
        super().__init__(table[label_column], table.features[label_column].names, transform)
        self.table, self.image_column, self.label_column = table, image_column, label_column

    def image(self, index: int) -> torch.Tensor:
        return pil_to_rgb(self.table[index][self.image_column])

    def subset(self, indices) -> "HubImages":
        return HubImages(self.table.select(list(indices)), self.image_column, self.label_column, self.transform)


def load_dataset(name: str, *, seed: int = 0, train_size: int | None = None, eval_size: int | None = None,
                 root: str | os.PathLike | None = None, download: bool | None = None) -> Splits:
    """Load a dataset by name and split it (stratified, seeded); optionally cap each split's size (lesson 03).

    `download` (default: when the hub is reachable) lets CIFAR be fetched into `root`.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    if name == "digits":
        splits = split_dataset(load_digits(), "digits (scikit-learn, 32 px RGB)", seed)
    elif name in ("cifar10", "cifar100"):
        splits = load_cifar(name, root, seed, download)
    elif name.startswith("imagefolder:"):
        dataset = load_image_folder(name.split(":", 1)[1])
        splits = split_dataset(dataset, name, seed)
    else:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}.")
    return replace(
        splits,
        train=stratified_subset(splits.train, train_size, seed),
        val=stratified_subset(splits.val, eval_size, seed),
        test=stratified_subset(splits.test, eval_size, seed),
    )


def load_digits() -> TensorImages:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upsampled to 32x32 RGB uint8 (lesson 03)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return TensorImages(images, digits.target, [str(d) for d in range(10)])


def load_cifar(name: str, root: Path, seed: int, download: bool | None) -> Splits:
    """CIFAR-10/100 from its python archive in `root` (downloaded first when allowed); val is 10% of train (lesson 03)."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    from helpers.profiles import is_online

    source = CIFAR10 if name == "cifar10" else CIFAR100
    folder = root / source.base_folder
    if not folder.is_dir():
        if download is None:
            download = is_online()
        if not download:
            raise FileNotFoundError(
                f"{name} is not in {folder} and the network is offline: connect once (it downloads by itself), "
                f"or put {source.filename} extracted into {root}, or use dataset 'digits'."
            )
        download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)
    classes = [c.decode() for c in read_cifar_pickle(folder / source.meta["filename"])[source.meta["key"]]]
    train = read_cifar_batches(folder, [f for f, _ in source.train_list], classes)
    test = read_cifar_batches(folder, [f for f, _ in source.test_list], classes)
    train_idx, val_idx = train_test_split(np.arange(len(train)), test_size=0.1, stratify=train.labels,
                                          random_state=seed)
    return Splits(train.subset(sorted(train_idx)), train.subset(sorted(val_idx)), test, classes, name)


def read_cifar_pickle(path: Path) -> dict:


    """One CIFAR python-format file (a pickled dict with bytes keys) with str keys (lesson 03)."""
    with open(path, "rb") as file:
        return {key.decode(): value for key, value in pickle.load(file, encoding="bytes").items()}


def read_cifar_batches(folder: Path, files: list[str], classes) -> TensorImages:
    """Concatenate CIFAR python-format batches: rows of 3072 bytes (R, G, B planes of 32x32) (lesson 03)."""
    images, labels = [], []
    for filename in files:
        batch = read_cifar_pickle(folder / filename)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
    return TensorImages(torch.from_numpy(np.concatenate(images)), labels, classes)


def hf_datasets_installed() -> bool:
    """True when the optional Hugging Face `datasets` package can be imported (lesson 03)."""
    return importlib.util.find_spec("datasets") is not None


def load_hf_dataset(name: str, split: str = "train", *, image_column: str | None = None,
                    label_column: str | None = None) -> HubImages:
    """A split of a Hugging Face dataset (hub id, or a local class-per-subfolder folder) as `HubImages` (lesson 03).

    The image and label columns default to the first `Image` and `ClassLabel` features.
    Needs the optional extra `datasets`; a hub id also needs the network or a cache.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(HF_DATASETS_MISSING) from None
    folder = Path(name).expanduser()
    try:
        if folder.is_dir():
            table = datasets.load_dataset("imagefolder", data_dir=str(folder), split=split)
        else:
            table = datasets.load_dataset(name, split=split)
    except (ConnectionError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"Hugging Face dataset {name!r} is not on this disk and could not be fetched ({error}): connect once "
            "so it downloads, or give a local folder with one subfolder of images per class."
        ) from None
    image_column = image_column or first_column_of_type(table, datasets.Image, "image_column")
    label_column = label_column or first_column_of_type(table, datasets.ClassLabel, "label_column")
    return HubImages(table, image_column, label_column)


def first_column_of_type(table, feature_type, argument: str) -> str:


    """The name of the first column of `table` whose feature is a `feature_type` (lesson 03)."""
    for column, feature in table.features.items():
        if isinstance(feature, feature_type):
            return column
    raise ValueError(f"The dataset has no {feature_type.__name__} column among {list(table.features)}: "
                     f"name the column with {argument}=.")
