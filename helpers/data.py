"""Datasets by name, stratified splits, transforms that follow the model's image processor.

Names: `digits` (scikit-learn's 8x8 digits upsampled to 32 px RGB; ships with scikit-learn,
always offline), `cifar10`, `cifar100` (downloaded once when online), and
`imagefolder:<path>` (a folder with one subfolder of images per class). Hugging Face
`datasets` loads through `load_hf_dataset` when the optional extra is installed.
Every dataset yields `(transform(image), label)` where `image` is a uint8 tensor [3, H, W].

For a folder of your own photos: `scan_folder` (what is wrong, with paths), `find_leaks`
(no file or identical content in two splits), class balance (`class_counts`,
`class_weights`, `weighted_sampler`), `channel_mean_std`, and DataLoader throughput
(`measure_throughput`). `export_image_folder` and `plant_messy_folder` build such a
folder from any dataset, for the lesson and the tests.
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

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder:<path>")
DEFAULT_ROOT = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "vit-course" / "data"))
TINY_IMAGE_SIDE = 16
SPLIT_NAMES = ("train", "val", "test")
HF_DATASETS_MISSING = (
    "Hugging Face `datasets` is not installed: install the optional extra with "
    "`pip install -e '.[datasets]'` (or `pip install datasets`) and rerun."
)


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
        return pil_to_rgb(image)


def pil_to_rgb(image: Image.Image) -> torch.Tensor:
    """A PIL image of any mode (L, P, RGBA, CMYK, ...) as a uint8 RGB tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


class HubImages(LabeledImages):
    """A Hugging Face `datasets.Dataset` with an image column and a ClassLabel column, as `LabeledImages`."""

    def __init__(self, table, image_column: str, label_column: str, transform=None):
        super().__init__(table[label_column], table.features[label_column].names, transform)
        self.table, self.image_column, self.label_column = table, image_column, label_column

    def image(self, index: int) -> torch.Tensor:
        return pil_to_rgb(self.table[index][self.image_column])

    def subset(self, indices) -> "HubImages":
        return HubImages(self.table.select(list(indices)), self.image_column, self.label_column, self.transform)


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


def hf_datasets_installed() -> bool:
    """True when the optional Hugging Face `datasets` package can be imported."""
    return importlib.util.find_spec("datasets") is not None


def load_hf_dataset(name: str, split: str = "train", *, image_column: str | None = None,
                    label_column: str | None = None) -> HubImages:
    """A split of a Hugging Face dataset (hub id, or a local class-per-subfolder folder) as `HubImages`.

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
    for column, feature in table.features.items():
        if isinstance(feature, feature_type):
            return column
    raise ValueError(f"The dataset has no {feature_type.__name__} column among {list(table.features)}: "
                     f"name the column with {argument}=.")


# ---------------------------------------------------------------- your own folder of images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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

    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> list[Path]:
        return [p.path for p in self.problems if p.action.startswith("skipped")]

    def report(self) -> str:
        """One line per problem, with paths relative to the scanned folder."""
        head = (f"{len(self.paths)} readable images in {len(self.classes)} classes; {len(self.problems)} problems, "
                f"{len(self.skipped)} files skipped")
        lines = [f"  {p.path.relative_to(self.root)}: {p.issue} -> {p.action}" for p in self.problems]
        return "\n".join([head, *lines])


def scan_folder(path: str | os.PathLike) -> FolderScan:
    """Open every file under `path`/<class>/ once: list unreadable files, odd modes, tiny images, duplicates."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root}: give a folder with one subfolder of images per class.")
    scan = FolderScan(root)
    for loose in sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")):
        scan.problems.append(Problem(loose, "not inside a class folder", "skipped; move it into its class folder"))
    first_seen: dict[str, Path] = {}
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(f for f in class_dir.rglob("*") if f.is_file() and not f.name.startswith("."))
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
                scan.problems.append(Problem(file, f"exact duplicate of {first_seen[digest].relative_to(root)}",
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
    return file_hash(file)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes: equal for exact copies, whatever their names."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def export_image_folder(dataset: LabeledImages, root: str | os.PathLike, per_class: int | None = None) -> Path:
    """Write `dataset` as PNG files `root/<class>/<index>.png`, at most `per_class` per class; returns `root`."""
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: export into a new or empty folder so no old files mix in.")
    written = Counter()
    for index in tqdm(range(len(dataset)), desc="writing PNGs", leave=False):
        label = dataset.labels[index]
        if per_class is not None and written[label] >= per_class:
            continue
        folder = root / dataset.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.image(index).permute(1, 2, 0).numpy()).save(folder / f"{index:05d}.png")
        written[label] += 1
    return root


def plant_messy_folder(root: str | os.PathLike) -> dict[str, Path]:
    """Give a clean class-per-subfolder tree the usual mess of real photos; returns {problem: path}.

    In the first class: a truncated JPEG, a grayscale and an RGBA PNG (converted in place),
    a non-image file, and an exact copy of its first image filed under the second class.
    In the second class: a palette PNG, a CMYK JPEG and a tiny 8x8 image. Plus an empty class folder.
    """
    root = Path(root).expanduser()
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and len(image_files(d)) >= 4] if root.is_dir() else []
    if len(class_dirs) < 2:
        raise ValueError(f"{root} needs two class folders with at least 4 images each to plant the mess in.")
    (first, second), images = class_dirs[:2], [image_files(d) for d in class_dirs[:2]]
    duplicate = second / f"copy_of_{first.name}_{images[0][0].name}"
    duplicate.write_bytes(images[0][0].read_bytes())
    notes = first / "notes.txt"
    notes.write_text("camera settings, not an image\n")
    empty = root / "empty_class"
    empty.mkdir()
    return {
        "truncated JPEG": rewrite(images[0][-1], "RGB", ".jpg", truncate=True),
        "grayscale PNG (mode L)": rewrite(images[0][-2], "L", ".png"),
        "RGBA PNG": rewrite(images[0][-3], "RGBA", ".png"),
        "palette PNG (mode P)": rewrite(images[1][-1], "P", ".png"),
        "CMYK JPEG": rewrite(images[1][-2], "CMYK", ".jpg"),
        "tiny image (8x8)": rewrite(images[1][-3], "RGB", ".png", side=8),
        "exact duplicate across classes": duplicate,
        "not an image": notes,
        "empty class folder": empty,
    }


def image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def rewrite(path: Path, mode: str, suffix: str, *, side: int | None = None, truncate: bool = False) -> Path:
    """Replace the image at `path` by the same picture in `mode` and format `suffix` (resized, or truncated)."""
    with Image.open(path) as image:
        image = image.convert(mode)
    if side is not None:
        image = image.resize((side, side))
    path.unlink()
    target = path.with_suffix(suffix)
    if suffix == ".jpg":
        image.save(target, quality=95)
    else:
        image.save(target)
    if truncate:
        target.write_bytes(target.read_bytes()[: target.stat().st_size * 2 // 3])
    return target


# ---------------------------------------------------------------- leakage between splits
@dataclass
class Leak:
    """One item found in two splits: by the same file, or by identical content under another name."""

    kind: str
    first: str
    second: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.first} and {self.second}"


@dataclass
class LeakageReport:
    """The leaks between train, val and test, and how many items each split holds."""

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
    """sha256 of item `index`: its file's bytes for images on disk, its pixels (and shape) otherwise."""
    if isinstance(dataset, FileImages):
        return file_hash(dataset.paths[index])
    image = dataset.image(index).contiguous()
    return hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest()


def find_leaks(splits: Splits) -> LeakageReport:
    """Every item of val or test that is also in an earlier split: the same file, or the same content."""
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
    if isinstance(dataset, FileImages):
        return f"{split_name} {Path(*dataset.paths[index].parts[-2:])}"
    return f"{split_name} #{index}"


# ---------------------------------------------------------------- class balance
def class_counts(dataset: LabeledImages) -> np.ndarray:
    """Images per class, in class order (zeros included)."""
    return np.bincount(dataset.labels, minlength=len(dataset.classes))


def plot_class_balance(splits: Splits, title: str = "class balance per split"):
    """Each class's share of train, val and test side by side (equal bars: a stratified split); returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(splits.classes) + 2), 3.2), layout="constrained")
    positions = np.arange(len(splits.classes))
    width = 0.8 / len(SPLIT_NAMES)
    for k, name in enumerate(SPLIT_NAMES):
        counts = class_counts(getattr(splits, name))
        ax.bar(positions + (k - 1) * width, counts / max(1, counts.sum()), width, label=f"{name} ({counts.sum()})")
    ax.set_xticks(positions, splits.classes, rotation=45 if len(splits.classes) > 12 else 0)
    ax.set(xlabel="class", ylabel="share of the split", title=title)
    ax.legend(fontsize=8)
    return fig


def long_tailed_subset(dataset: LabeledImages, imbalance_ratio: float, seed: int) -> LabeledImages:
    """A subset whose class sizes fall geometrically from the smallest class's size down by `imbalance_ratio`."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be 1 or more (largest / smallest class), got {imbalance_ratio}.")
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    head_size = class_counts(dataset).min()
    num_classes = len(dataset.classes)
    keep = []
    for c in range(num_classes):
        size = max(1, round(head_size * imbalance_ratio ** (-c / max(1, num_classes - 1))))
        keep.extend(rng.permutation(np.flatnonzero(labels == c))[:size])
    return dataset.subset(sorted(keep))


def class_weights(labels, num_classes: int | None = None) -> torch.Tensor:
    """Per-class loss weights N / (C * count): rare classes weigh more, and the mean weight per image is 1.

    Use them as `torch.nn.CrossEntropyLoss(weight=class_weights(labels))`.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes or 0)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"Class(es) {missing} have no images, so they cannot be weighted: drop them or add images.")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def weighted_sampler(labels, num_samples: int | None = None,
                     generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A sampler that draws every class equally often (with replacement): pass it to `make_loader(sampler=...)`."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("A weighted sampler needs at least one label.")
    per_item = 1.0 / np.bincount(labels)[labels]
    return WeightedRandomSampler(torch.as_tensor(per_item, dtype=torch.double), num_samples or len(labels),
                                 replacement=True, generator=generator)


# ---------------------------------------------------------------- statistics
def channel_mean_std(dataset: LabeledImages, max_images: int | None = None) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation over every pixel of the raw images, on the [0, 1] scale."""
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


# ---------------------------------------------------------------- feeding
def make_loader(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
                num_workers: int = 0, sampler=None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader: shuffled by `shuffle_generator` (or drawn by `sampler`) for training, in order for evaluation.

    `pin_memory` defaults to whether CUDA is available, `persistent_workers` to `num_workers > 0`.
    """
    if sampler is not None and shuffle_generator is not None:
        raise ValueError("Give either a shuffle_generator or a sampler, not both: the sampler decides the order.")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_generator is not None,
        generator=shuffle_generator,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0,
    )


@dataclass(frozen=True)
class LoaderOptions:
    """The DataLoader options that decide how fast images arrive."""

    num_workers: int
    pin_memory: bool = False
    persistent_workers: bool = False


def loader_options_to_compare(cuda: bool | None = None) -> list[LoaderOptions]:
    """num_workers 0, 1, 2 (workers persistent or not), each with and without pin_memory when CUDA is here.

    Pinned memory only speeds up copies to a GPU, so without CUDA it is left out.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    pins = (False, True) if cuda else (False,)
    options = [LoaderOptions(0, pin) for pin in pins]
    options += [LoaderOptions(workers, pin, persistent) for workers in (1, 2) for persistent in (False, True)
                for pin in pins]
    return options


def measure_throughput(dataset, batch_size: int, options: list[LoaderOptions] | None = None, epochs: int = 2,
                       device: str | None = None) -> list[dict]:
    """Images per second through a DataLoader for each of `options`, over `epochs` passes (worker start-up included).

    Each batch is copied to `device` (default: CUDA when available), as training does. Each row also
    gives the wait for the first batch of the first and of the last epoch: persistent workers skip
    the restart between epochs.
    """
    if epochs < 1 or len(dataset) == 0:
        raise ValueError("Measure at least one epoch over a dataset with at least one image.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for option in tqdm(options or loader_options_to_compare(), desc="loader options", leave=False):
        loader = make_loader(dataset, batch_size, num_workers=option.num_workers, pin_memory=option.pin_memory,
                             persistent_workers=option.persistent_workers)
        first_waits, started = [], time.perf_counter()
        for _ in range(epochs):
            epoch_start = time.perf_counter()
            for batch_index, (images, _labels) in enumerate(loader):
                if batch_index == 0:
                    first_waits.append(time.perf_counter() - epoch_start)
                images.to(device, non_blocking=option.pin_memory)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        del loader  # shuts persistent workers down before the next option starts its own
        rows.append({
            "num_workers": option.num_workers, "pin_memory": option.pin_memory,
            "persistent_workers": option.persistent_workers,
            "images/s": epochs * len(dataset) / seconds,
            "first batch, epoch 1 (s)": first_waits[0], f"first batch, epoch {epochs} (s)": first_waits[-1],
        })
    return rows


def cpu_load() -> str:
    """This machine's cores and, where the OS reports it, the 1-minute load average (processes wanting a core)."""
    cores = f"{os.cpu_count()} cores"
    if not hasattr(os, "getloadavg"):
        return cores
    return f"{cores}, load average {os.getloadavg()[0]:.1f} (processes wanting a core)"


def resize_cost(dataset: LabeledImages, spec: ImageSpec, sides, patch_sizes=(16,), n: int = 64) -> list[dict]:
    """What feeding images at each square side costs: pixels, memory, resize time, ViT tokens.

    The time is the mean over `n` images on one thread, as a DataLoader worker runs them.
    """
    images = [dataset.image(i) for i in range(min(n, len(dataset)))]
    native_side = images[0].shape[-1]
    threads = torch.get_num_threads()
    rows = []
    torch.set_num_threads(1)
    try:
        for side in sides:
            transform = eval_transform(replace(spec, size=(side, side)))
            started = time.perf_counter()
            for image in images:
                transform(image)
            seconds = time.perf_counter() - started
            row = {
                "side (px)": side, "pixels vs native": (side / native_side) ** 2,
                "KiB per image (float32)": 3 * side * side * 4 / 1024,
                "ms per image (resize + normalise)": 1000 * seconds / len(images),
            }
            row.update({f"tokens at patch {p} (+ CLS)": (side // p) ** 2 + 1 for p in patch_sizes})
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


def plot_before_after(image: torch.Tensor, processed: torch.Tensor, spec: ImageSpec):
    """A raw uint8 image, the same image as the model receives it (shown un-normalised), and both value ranges."""
    import matplotlib.pyplot as plt

    from helpers.plots import as_displayable

    fig, (ax_raw, ax_processed, ax_hist) = plt.subplots(1, 3, figsize=(9, 2.8), layout="constrained")
    ax_raw.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax_raw.set_title(f"before: {image.shape[1]}x{image.shape[2]} uint8", fontsize=9)
    ax_processed.imshow(as_displayable(processed, spec), interpolation="nearest")
    ax_processed.set_title(f"after: {processed.shape[1]}x{processed.shape[2]} float32", fontsize=9)
    for ax in (ax_raw, ax_processed):
        ax.axis("off")
    ax_hist.hist(image.flatten().numpy() / 255, bins=40, alpha=0.6, label="before, / 255")
    ax_hist.hist(processed.flatten().numpy(), bins=40, alpha=0.6, label="after (normalised)")
    ax_hist.set(title="pixel values", yscale="log")
    ax_hist.legend(fontsize=8)
    return fig


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a markdown table (display it with IPython.display.Markdown)."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def format_cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


# ---------------------------------------------------------------- exercise checkers
def dataset_with_duplicates(seed: int = 0) -> TensorImages:
    """120 distinct random images in 4 classes plus 12 exact copies, 4 of them filed under another class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (120, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = [i % 4 for i in range(120)]
    copied = list(range(0, 24, 2))
    copy_labels = [(labels[i] + 1) % 4 if k % 3 == 0 else labels[i] for k, i in enumerate(copied)]
    return TensorImages(torch.cat([images, images[copied]]), labels + copy_labels, ["a", "b", "c", "d"])


def check_clean_split(make_splits) -> bool:
    """Exercise checker for `make_splits(dataset, seed) -> Splits`: True, or AssertionError saying what is wrong."""
    dataset = dataset_with_duplicates()
    distinct = {content_hash(dataset, i) for i in range(len(dataset))}
    splits = make_splits(dataset, seed=0)
    if not isinstance(splits, Splits):
        raise AssertionError(f"Return a helpers.data.Splits(train, val, test, classes), not {type(splits).__name__}.")
    report = find_leaks(splits)
    if not report.ok:
        raise AssertionError(f"{len(report.leaks)} image(s) are in two splits (e.g. {report.leaks[0]}): drop exact "
                             "duplicates (same content_hash) before splitting.")
    hashes = split_hashes(splits)
    every = [h for name in SPLIT_NAMES for h in hashes[name]]
    if len(every) != len(set(every)):
        raise AssertionError("A split holds the same image twice: keep one copy of each duplicate.")
    if set(every) != distinct:
        raise AssertionError(f"The splits hold {len(set(every))} distinct images but the dataset has {len(distinct)}: "
                             "every distinct image must be in exactly one split.")
    for name in ("val", "test"):
        share = len(getattr(splits, name)) / len(every)
        if not 0.1 <= share <= 0.2:
            raise AssertionError(f"{name} holds {share:.0%} of the images: aim for about 70/15/15.")
    overall = np.bincount([label for name in SPLIT_NAMES for label in getattr(splits, name).labels], minlength=4)
    for name in SPLIT_NAMES:
        counts = class_counts(getattr(splits, name))
        expected = overall / overall.sum() * counts.sum()
        if np.abs(counts - expected).max() > 1.5:
            raise AssertionError(f"The {name} split has {counts.tolist()} images per class but a stratified split "
                                 f"would have about {np.round(expected, 1).tolist()}: pass stratify=labels.")
    if split_hashes(make_splits(dataset, seed=0)) != hashes:
        raise AssertionError("The same seed gave different splits: pass random_state=seed to every random step.")
    if split_hashes(make_splits(dataset, seed=1)) == hashes:
        raise AssertionError("Seeds 0 and 1 gave the same splits: use the seed argument, not a fixed number.")
    print(f"Correct: {len(distinct)} distinct images, stratified {[len(hashes[n]) for n in SPLIT_NAMES]}, "
          "seeded, and no image in two splits.")
    return True


def split_hashes(splits: Splits) -> dict[str, list[str]]:
    return {name: sorted(content_hash(getattr(splits, name), i) for i in range(len(getattr(splits, name))))
            for name in SPLIT_NAMES}


def check_channel_stats(channel_stats) -> bool:
    """Exercise checker for `channel_stats(dataset) -> (mean, std)`, 3 numbers each on the [0, 1] scale."""
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor([40.0, 120.0, 200.0]).view(1, 3, 1, 1)
    brightness = torch.linspace(-30, 30, 24).view(-1, 1, 1, 1)
    noise = torch.randn(24, 3, 6, 6, generator=generator) * torch.tensor([10.0, 25.0, 5.0]).view(1, 3, 1, 1)
    images = (base + brightness + noise).clamp(0, 255).round().to(torch.uint8)
    dataset = TensorImages(images, [0] * 24, ["only"])
    expected_mean, expected_std = (np.array(v) for v in channel_mean_std(dataset))
    mean, std = (np.asarray(v, dtype=float).reshape(-1) for v in channel_stats(dataset))
    if mean.shape != (3,) or std.shape != (3,):
        raise AssertionError(f"Return (mean, std) with one number per channel (3 each), "
                             f"got {mean.size} and {std.size}.")
    if np.allclose(mean, expected_mean * 255, atol=0.3):
        raise AssertionError("The mean is on the 0-255 scale: divide the uint8 pixels by 255 first.")
    if not np.allclose(mean, expected_mean, atol=1e-3):
        raise AssertionError(f"The means {mean.round(3).tolist()} should be {expected_mean.round(3).tolist()}: average "
                             "each channel over every pixel of every image.")
    per_image_std = (images.double() / 255).std((2, 3), correction=0).mean(0).numpy()
    if np.allclose(std, per_image_std, atol=1e-3):
        raise AssertionError("That is the average of per-image stds: take the std over all pixels of all images "
                             "together (E[x^2] - E[x]^2), which also counts differences between images.")
    if not np.allclose(std, expected_std, atol=2e-3):
        raise AssertionError(f"The stds {std.round(3).tolist()} should be {expected_std.round(3).tolist()}: take the "
                             "square root of E[x^2] - E[x]^2 per channel, over all pixels.")
    print(f"Correct: mean {mean.round(3).tolist()}, std {std.round(3).tolist()} per channel.")
    return True
