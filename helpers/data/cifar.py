"""CIFAR-10/100 (lesson 03): the real archive through torchvision, which checks the published md5 of every file
before reading it; a stand-in (generated images in CIFAR's format, `prefetch --stand-in`) checked against its
own sha256s and read with an unpickler that builds numpy arrays and nothing else; and a download that resumes
where an interrupted one stopped and never leaves a half archive under the final name.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from helpers.caches import DATA_ROOT, cifar_files, cifar_folder, cifar_source, cifar_status, marker_matches
from helpers.data.images import TensorImages


def read_real_cifar(name: str, root: Path) -> tuple[TensorImages, TensorImages, list[str]]:
    """(train, test, classes) of the real CIFAR archive in `root`, read by torchvision after it checked every
    file's published md5 (lesson 03)."""
    source = cifar_source(name)
    try:
        train, test = source(str(root), train=True), source(str(root), train=False)
    except RuntimeError:
        raise ValueError(
            f"{cifar_folder(name, root)} holds files that do not match {name}'s published checksums (an interrupted "
            "copy or a changed file): delete that folder and run `python -m helpers.course prefetch`."
        ) from None
    return as_tensor_images(train), as_tensor_images(test), list(train.classes)


def as_tensor_images(dataset) -> TensorImages:
    """A torchvision CIFAR dataset (uint8 [N, 32, 32, 3] in `.data`) as `TensorImages` [N, 3, 32, 32] (lesson 03)."""
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return TensorImages(images, dataset.targets, dataset.classes)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, bytes and numpy arrays; refuses every other class or function, so a file
    cannot run code when it is read (lesson 03)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}  # bytes, in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file: only numpy arrays are.")
        return super().find_class(module, name)


def read_numpy_pickle(path: Path) -> dict:
    """One CIFAR python-format file (a dict with bytes keys) with str keys, read by `NumpyOnlyUnpickler` (lesson 03)."""
    with open(path, "rb") as file:
        loaded = NumpyOnlyUnpickler(file, encoding="bytes").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a CIFAR batch (a dict): write the stand-in again with `prefetch --stand-in`.")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def read_stand_in_cifar(name: str, root: Path) -> tuple[TensorImages, TensorImages, list[str]]:
    """(train, test, classes) of a CIFAR stand-in in `root`, after checking every file against the sha256 its
    marker lists (lesson 03)."""
    folder, source = cifar_folder(name, root), cifar_source(name)
    if not marker_matches(folder):
        raise ValueError(f"The {name} stand-in in {folder} does not match its own checksums (an interrupted write?): "
                         "run `python -m helpers.course prefetch --stand-in` again.")
    meta = read_numpy_pickle(folder / source.meta["filename"])
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[source.meta["key"]]]

    def batches(files) -> TensorImages:
        images, labels = [], []
        for filename, _ in files:
            batch = read_numpy_pickle(folder / filename)
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
        return TensorImages(torch.from_numpy(np.concatenate(images)), labels, classes)

    return batches(source.train_list), batches(source.test_list), classes


def read_cifar(name: str, root: Path | None = None) -> tuple[TensorImages, TensorImages, list[str], bool]:
    """(train, test, classes, stand_in) of CIFAR `name` in `root` (default: the kit's data cache), real or a
    stand-in (lesson 03)."""
    root = Path(root) if root is not None else DATA_ROOT
    if cifar_status(name, root) == "stand-in":
        return (*read_stand_in_cifar(name, root), True)
    return (*read_real_cifar(name, root), False)


def download_file(url: str, destination: Path, md5: str, *, timeout: float = 60) -> Path:
    """Download `url` to `destination`, resuming a `.part` file an interrupted download left, and checking
    the md5 before the file gets its final name (lesson 03)."""
    destination = Path(destination)
    if destination.is_file() and file_md5(destination) == md5:
        return destination
    part = destination.with_name(destination.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = have > 0 and response.status == 206
        expected = int(response.headers.get("Content-Length", -1)) + (have if resumed else 0)
        with open(part, "ab" if resumed else "wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
    if 0 <= expected != part.stat().st_size:
        raise ConnectionError(f"The download of {url} stopped after {part.stat().st_size:,} of {expected:,} bytes: "
                              "run the command again and it resumes there.")
    if file_md5(part) != md5:
        part.unlink()
        raise ValueError(f"The download of {url} does not match its published md5: run the command again.")
    os.replace(part, destination)
    return destination


def file_md5(path: Path) -> str:
    """The md5 of a file (what torchvision publishes for CIFAR), read a megabyte at a time (lesson 03)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def install_archive(archive: Path, name: str, root: Path) -> Path:
    """Extract CIFAR's files from `archive` into a staging folder, then `install_folder` it (lesson 03)."""
    staging = root / f".{cifar_folder(name, root).name}.{os.getpid()}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in cifar_files(name)]
        for member in members:
            with tar.extractfile(member) as source, open(staging / Path(member.name).name, "wb") as target:
                shutil.copyfileobj(source, target)
    if {Path(m.name).name for m in members} != set(cifar_files(name)):
        shutil.rmtree(staging)
        raise ValueError(f"{archive} lacks some of {name}'s files: delete it and run the command again.")
    return install_folder(staging, name, root)


def install_folder(staging: Path, name: str, root: Path) -> Path:
    """Make the complete folder `staging` CIFAR `name`'s folder under `root`, replacing what was there (a
    stand-in, say) by renames, so the folder a load finds is always whole (lesson 03)."""
    folder = cifar_folder(name, root)
    old = root / f".{folder.name}.{os.getpid()}.replaced"
    if folder.exists():
        folder.rename(old)
    Path(staging).rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def fetch_cifar(name: str, root: Path | None = None, *, url: str | None = None, md5: str | None = None) -> Path:
    """Download CIFAR `name` into `root` (resuming an interrupted download) and install it; returns its folder
    (lesson 03). `url`/`md5` default to torchvision's published ones."""
    root = Path(root) if root is not None else DATA_ROOT
    root.mkdir(parents=True, exist_ok=True)
    source = cifar_source(name)
    archive = download_file(url or source.url, root / source.filename, md5 or source.tgz_md5)
    return install_archive(archive, name, root)

