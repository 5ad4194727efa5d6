"""Datasets by name, stratified splits, transforms that follow the model's image processor.

Names: `digits` (scikit-learn's 8x8 digits upsampled to 32 px RGB; ships with scikit-learn,
always offline), `cifar10`, `cifar100` (downloaded once when online), and
`imagefolder:<path>` (a folder with one subfolder of images per class).
Every dataset yields `(transform(image), label)` where `image` is a uint8 tensor [3, H, W].
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder:<path>")
DEFAULT_ROOT = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "vit-course" / "data"))
TINY_IMAGE_SIDE = 16


# ---------------------------------------------------------------- transforms
@dataclass(frozen=True)
class ImageSpec:
    """What a model expects: image size (height, width) and the normalisation of its pretraining."""

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
    """The shared last step of every pipeline: uint8 -> float in [0, 1] -> normalised like pretraining."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])


def eval_transform(spec: ImageSpec) -> v2.Compose:
    """Resize to the model's size, then `to_model_input`: what evaluation (and no augmentation) uses."""
    return v2.Compose([v2.Resize(spec.size, antialias=True), to_model_input(spec)])


# ---------------------------------------------------------------- datasets
class LabeledImages(Dataset):
    """Images with integer labels and class names; a per-sample transform is applied in `__getitem__`."""

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
    """Images held in memory as one uint8 tensor [N, 3, H, W]."""

    def __init__(self, images: torch.Tensor, labels, classes, transform=None):
        super().__init__(labels, classes, transform)
        self.images = images

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def subset(self, indices) -> "TensorImages":
        indices = list(indices)
        return TensorImages(self.images[indices], [self.labels[i] for i in indices], self.classes, self.transform)


class FileImages(LabeledImages):
    """Images read from files when asked for; any mode (L, P, RGBA, CMYK, ...) becomes RGB."""

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
    """Decode an image file of any mode to a uint8 RGB tensor [3, H, W]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


@dataclass
class Splits:
    """Train, validation and test sets of one dataset, with its class names."""

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


# ---------------------------------------------------------------- splitting
def stratified_split(labels, val_fraction: float, test_fraction: float, seed: int):
    """Indices (train, val, test): seeded, stratified by label, disjoint, covering every item."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    labels = np.asarray(labels)
    indices = np.arange(len(labels))
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
    return sorted(train), sorted(val), sorted(test)


def stratified_subset(dataset: LabeledImages, size: int | None, seed: int) -> LabeledImages:
    """At most `size` items of `dataset`, keeping the class balance (None: all of it)."""
    if size is None or size >= len(dataset):
        return dataset
    if size < len(set(dataset.labels)):
        raise ValueError(f"A subset of {size} images cannot hold all {len(set(dataset.labels))} classes: ask for more.")
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=size, stratify=dataset.labels, random_state=seed)
    return dataset.subset(sorted(keep))


def split_dataset(dataset: LabeledImages, source: str, seed: int, val_fraction=0.15, test_fraction=0.15) -> Splits:
    train, val, test = stratified_split(dataset.labels, val_fraction, test_fraction, seed)
    return Splits(dataset.subset(train), dataset.subset(val), dataset.subset(test), dataset.classes, source)


# ---------------------------------------------------------------- loading by name
def load_dataset(name: str, *, seed: int = 0, train_size: int | None = None, eval_size: int | None = None,
                 root: str | os.PathLike | None = None, download: bool | None = None) -> Splits:
    """Load a dataset by name and split it (stratified, seeded); optionally cap each split's size.

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
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upsampled to 32x32 RGB uint8."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return TensorImages(images, digits.target, [str(d) for d in range(10)])


def load_cifar(name: str, root: Path, seed: int, download: bool | None) -> Splits:
    """CIFAR-10/100 from its python archive in `root` (downloaded first when allowed); val is 10% of train."""
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
    with open(path, "rb") as file:
        return {key.decode(): value for key, value in pickle.load(file, encoding="bytes").items()}


def read_cifar_batches(folder: Path, files: list[str], classes) -> TensorImages:
    """Concatenate CIFAR python-format batches: rows of 3072 bytes (R, G, B planes of 32x32)."""
    images, labels = [], []
    for filename in files:
        batch = read_cifar_pickle(folder / filename)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
    return TensorImages(torch.from_numpy(np.concatenate(images)), labels, classes)


# ---------------------------------------------------------------- your own folder of images
@dataclass
class Problem:
    """One finding of `scan_folder`: which file, what is wrong, and what the kit does about it."""

    path: Path
    issue: str
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.issue} -> {self.action}"


@dataclass
class FolderScan:
    """The readable images of a class-per-subfolder tree, and every problem found on the way."""

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> list[Path]:
        return [p.path for p in self.problems if p.action.startswith("skipped")]

    def report(self) -> str:
        head = f"{len(self.paths)} readable images in {len(self.classes)} classes; {len(self.problems)} problems"
        return "\n".join([head, *(f"  {problem}" for problem in self.problems)])


def scan_folder(path: str | os.PathLike) -> FolderScan:
    """Open every file under `path`/<class>/ once: list unreadable files, odd modes, tiny images, duplicates."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root}: give a folder with one subfolder of images per class.")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    scan = FolderScan()
    first_seen: dict[str, Path] = {}
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.rglob("*") if f.is_file())
        if not files:
            scan.problems.append(Problem(class_dir, "empty class folder", "class left out"))
            continue
        label = len(scan.classes)
        scan.classes.append(class_dir.name)
        for file in files:
            digest = inspect_image(file, scan.problems)
            if digest is None:
                continue
            if digest in first_seen:
                scan.problems.append(Problem(file, f"exact duplicate of {first_seen[digest]}",
                                             "skipped, so one image cannot land in two splits"))
                continue
            first_seen[digest] = file
            scan.paths.append(file)
            scan.labels.append(label)
    return scan


def inspect_image(file: Path, problems: list[Problem]) -> str | None:
    """The file's content hash if it decodes as an image, else None; problems found are appended."""
    try:
        with Image.open(file) as image:
            image.load()
            mode, size = image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        problems.append(Problem(file, f"unreadable ({type(error).__name__}: {error})", "skipped"))
        return None
    if mode != "RGB":
        problems.append(Problem(file, f"mode {mode}", "converted to RGB"))
    if min(size) < TINY_IMAGE_SIDE:
        problems.append(Problem(file, f"tiny image {size[0]}x{size[1]}", "kept; upsampled to the model's size"))
    return hashlib.sha256(file.read_bytes()).hexdigest()


def load_image_folder(path: str | os.PathLike) -> FileImages:
    """A folder with one subfolder per class; unreadable files are listed in a warning and skipped."""
    scan = scan_folder(path)
    if len(scan.classes) < 2:
        raise ValueError(
            f"{path} holds {len(scan.classes)} class folder(s) with images: a classifier needs at least two "
            "subfolders, one per class, each with images."
        )
    if scan.problems:
        warnings.warn(f"{path}: " + scan.report(), stacklevel=2)
    return FileImages(scan.paths, scan.labels, scan.classes)


# ---------------------------------------------------------------- feeding
def make_loader(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader: shuffled by `shuffle_generator` for training, in order for evaluation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_generator is not None,
        generator=shuffle_generator,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
