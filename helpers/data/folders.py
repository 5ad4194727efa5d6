"""A folder of your own images (lesson 03): scan it for problems, load it, or write one from any dataset."""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from helpers.data.images import FileImages, LabeledImages
from helpers.data.photos import HEIC_FIX, HEIC_ISSUE, HEIC_SUFFIXES, heif_available, photo_notes
from helpers.progress import progress_bar

TINY_IMAGE_SIDE = 16


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


CLASS_LEFT_OUT = "class left out"  # the action of a problem that drops a whole class folder


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

    @property
    def left_out(self) -> list[Problem]:
        """The class folders left out: unreadable, empty, or with too few images."""
        return [p for p in self.problems if p.action.startswith(CLASS_LEFT_OUT)]

    def report(self) -> str:
        """One line per problem, with paths relative to the scanned folder."""
        head = (f"{len(self.paths)} readable images in {len(self.classes)} classes; {len(self.problems)} problems, "
                f"{len(self.skipped)} files skipped")
        lines = [f"  {p.path.relative_to(self.root)}: {p.issue} -> {p.action}" for p in self.problems]
        return "\n".join([head, *lines])


def scan_folder(path: str | os.PathLike) -> FolderScan:
    """Open every file under `path`/<class>/ once: list unreadable files, odd modes, tiny images, duplicates,
    hidden folders, links that lead back into the tree, and classes with too few readable images (lesson 03)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root}: give a folder with one subfolder of images per class.")
    scan = FolderScan(root)
    for loose in sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")):
        scan.problems.append(Problem(loose, "not inside a class folder", "skipped; move it into its class folder"))
    walked: set[Path] = set()
    readable: dict[Path, list[tuple[Path, str]]] = {}
    bar = progress_bar(total=0, desc="scan", unit=" files", leave=False)
    for class_dir in walkable_folders(root, [p for p in sorted(root.iterdir()) if p.is_dir()], walked, scan.problems):
        files = class_files(class_dir, root, walked, scan.problems)
        bar.total += len(files)
        images = []
        for file in files:
            digest = inspect_image(file, scan.problems)
            bar.update()
            if digest is not None:
                images.append((file, digest))
        if images:
            readable[class_dir] = images
        else:
            issue = f"no readable image among its {len(files)} files" if files else "empty class folder"
            scan.problems.append(Problem(class_dir, issue, CLASS_LEFT_OUT))
    bar.close()
    add_classes(scan, readable)
    return scan


MIN_CLASS_IMAGES = 3  # one each for training, validation and test


def add_classes(scan: FolderScan, readable: dict[Path, list[tuple[Path, str]]]) -> None:
    """Label each class's images, skipping exact duplicates of an image seen before; a class left with fewer
    than `MIN_CLASS_IMAGES` is left out (lesson 03)."""
    first_seen: dict[str, Path] = {}
    for class_dir, images in readable.items():
        unique = []
        for file, digest in images:
            if digest in first_seen:
                scan.problems.append(Problem(file, f"exact duplicate of {first_seen[digest].relative_to(scan.root)}",
                                             "skipped, so one image cannot land in two splits"))
                continue
            first_seen[digest] = file
            unique.append(file)
        if len(unique) < MIN_CLASS_IMAGES:
            scan.problems.append(Problem(
                class_dir, f"only {len(unique)} image(s): a class needs {MIN_CLASS_IMAGES}, one each for "
                           "training, validation and test", f"{CLASS_LEFT_OUT}; add images to keep it"))
            continue
        scan.paths += unique
        scan.labels += [len(scan.classes)] * len(unique)
        scan.classes.append(class_dir.name)


def class_files(class_dir: Path, root: Path, walked: set[Path], problems: list[Problem]) -> list[Path]:
    """The files under `class_dir` (hidden ones left out), through subfolders that are safe to walk (lesson 03)."""
    files = []
    for folder, subfolders, names in os.walk(class_dir, followlinks=True):
        here = Path(folder)
        subfolders[:] = [p.name for p in walkable_folders(root, [here / n for n in sorted(subfolders)], walked,
                                                          problems)]
        files += [here / name for name in sorted(names) if not name.startswith(".")]
    return files


def walkable_folders(root: Path, folders: list[Path], walked: set[Path], problems: list[Problem]) -> list[Path]:
    """`folders` less hidden ones (Jupyter's .ipynb_checkpoints, ...) and links that lead back into the tree, to
    above it or to a folder walked already; each one left out is a problem (lesson 03)."""
    kept, top = [], root.resolve()
    for folder in folders:
        target = folder.resolve()
        if folder.name.startswith("."):
            problems.append(Problem(folder, "hidden folder", "skipped; its files are not images of a class"))
        elif folder.is_symlink() and (target == top or target in top.parents or top in target.parents):
            where = ("the scanned folder itself" if target == top else "a folder above the scanned folder"
                     if target in top.parents else "a folder inside the scanned folder")
            problems.append(Problem(folder, f"link to {where} ({target})",
                                    "skipped, so no image is counted twice or under another class"))
        elif target in walked:
            problems.append(Problem(folder, f"link to {target}, walked already", "skipped, so no image is counted twice"))
        else:
            walked.add(target)
            kept.append(folder)
    return kept


def inspect_image(file: Path, problems: list[Problem]) -> str | None:
    """The file's content hash if it decodes as an image, else None; problems found are appended (lesson 03)."""
    if file.suffix.lower() in HEIC_SUFFIXES and not heif_available():
        problems.append(Problem(file, HEIC_ISSUE, f"skipped; {HEIC_FIX}"))
        return None
    try:
        with Image.open(file) as image:
            image.load()
            size, notes = image.size, photo_notes(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        problems.append(Problem(file, f"unreadable ({type(error).__name__}: {error})", "skipped"))
        return None
    problems.extend(Problem(file, issue, action) for issue, action in notes)
    if min(size) < TINY_IMAGE_SIDE:
        problems.append(Problem(file, f"tiny image {size[0]}x{size[1]}", "kept; upsampled to the model's size"))
    return file_hash(file)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, read a megabyte at a time: equal for exact copies, whatever their names (lesson 03)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    for index in progress_bar(range(len(dataset)), desc="writing PNGs", leave=False):
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
