"""A folder of your own images (lesson 03): scan it for problems, load it, or write one from any dataset."""
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
from helpers.data.images import FileImages, LabeledImages


TINY_IMAGE_SIDE = 16


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Problem:
    """One finding of `scan_folder`: which file, what is wrong, and what the kit does about it (lesson 03)."""

    path: Path
    issue: str
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.issue} -> {self.action}"


@dataclass
class FolderScan:
    """The readable images of a class-per-subfolder tree, and every problem found on the way (lesson 03)."""

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
    """Open every file under `path`/<class>/ once: list unreadable files, odd modes, tiny images, duplicates (lesson 03)."""
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
    """The file's content hash if it decodes as an image, else None; problems found are appended (lesson 03)."""
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
    """sha256 of a file's bytes: equal for exact copies, whatever their names (lesson 03)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_image_folder(path: str | os.PathLike) -> FileImages:
    """A folder with one subfolder per class; unreadable files are listed in a warning and skipped (lesson 03)."""
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
    """Write `dataset` as PNG files `root/<class>/<index>.png`, at most `per_class` per class; returns `root` (lesson 03)."""
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


def image_files(folder: Path) -> list[Path]:


    """The image files directly inside `folder`, sorted (lesson 03)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
