"""Where the gpu profile's model and data are cached, whether each is complete, and whether it is a stand-in
(lesson 00).

The model lives in the Hugging Face cache (`HF_HOME`), CIFAR in `COURSE_DATA` (default
~/.cache/vit-course/data). `python -m helpers.course prefetch` fills both; `prefetch --stand-in` writes
stand-ins with the real shapes (random weights, generated images) for machines that can never reach the
hub, each marked by a `STAND_IN.json` that lists its files' sha256. A real download replaces a stand-in.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DATA_ROOT = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "vit-course" / "data"))
STAND_IN_MARKER = "STAND_IN.json"
MEANINGLESS = "meaningless on stand-ins"  # what an accuracy statement says when it was measured on stand-ins
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read a megabyte at a time (lesson 00)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_marker(folder: Path, what: str, files: list[str]) -> None:
    """Mark `folder` as a stand-in: what it stands in for, and the sha256 of each of its `files` (lesson 00)."""
    folder = Path(folder)
    record = {"stand_in": True, "what": what, "sha256": {name: file_sha256(folder / name) for name in files}}
    (folder / STAND_IN_MARKER).write_text(json.dumps(record, indent=1))


def read_marker(folder: Path) -> dict | None:
    """The stand-in record of `folder`, or None when it holds no (readable) marker (lesson 00)."""
    try:
        record = json.loads((Path(folder) / STAND_IN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), dict) else None


def marker_matches(folder: Path, names: list[str] | None = None) -> bool:
    """True when the files of a stand-in (or only `names` of them) still have the sha256 its marker lists (lesson 00)."""
    record = read_marker(folder)
    if record is None:
        return False
    digests = record["sha256"]
    for name in names if names is not None else digests:
        path = Path(folder) / name
        if name not in digests or not path.is_file() or file_sha256(path) != digests[name]:
            return False
    return True


def hub_cache() -> Path:
    """The Hugging Face hub cache folder in use (`HF_HUB_CACHE`, else `HF_HOME`/hub) (lesson 00)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_folder(model_id: str, cache_dir: Path | None = None) -> Path:
    """The cache folder of hub model `model_id` (models--owner--name) (lesson 00)."""
    return Path(cache_dir or hub_cache()) / f"models--{model_id.replace('/', '--')}"


def hub_snapshot(model_id: str, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot of `model_id` that 'main' points to, when it holds a config and weights (lesson 00).

    A download in progress keeps its bytes in `.incomplete` files and links them in only when complete,
    so a half download is never taken for a model."""
    repo = hub_repo_folder(model_id, cache_dir)
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    if (snapshot / "config.json").is_file() and any((snapshot / name).is_file() for name in WEIGHT_FILES):
        return snapshot
    return None


def model_status(model_id: str, cache_dir: Path | None = None) -> str:
    """'real', 'stand-in' or 'missing': what the Hugging Face cache holds for `model_id` (lesson 00)."""
    snapshot = hub_snapshot(model_id, cache_dir)
    if snapshot is None:
        return "missing"
    return "stand-in" if (snapshot / STAND_IN_MARKER).is_file() else "real"


def cifar_source(name: str):
    """torchvision's CIFAR10 or CIFAR100 class for 'cifar10' or 'cifar100': its folder, files and md5s (lesson 03)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    sources = {"cifar10": CIFAR10, "cifar100": CIFAR100}
    if name not in sources:
        raise ValueError(f"Unknown CIFAR dataset {name!r}: choose cifar10 or cifar100.")
    return sources[name]


def cifar_files(name: str) -> list[str]:
    """The file names of CIFAR's python archive: the training batches, the test batch and the meta file (lesson 03)."""
    source = cifar_source(name)
    return [f for f, _ in source.train_list + source.test_list] + [source.meta["filename"]]


def cifar_folder(name: str, root: Path | None = None) -> Path:
    """Where CIFAR-10 or CIFAR-100 lives under `root` (default `DATA_ROOT`), as torchvision extracts it (lesson 03)."""
    return Path(root if root is not None else DATA_ROOT) / cifar_source(name).base_folder


def cifar_status(name: str, root: Path | None = None) -> str:
    """'present', 'stand-in' or 'missing': what `root` holds for CIFAR `name` (lesson 03).

    'present' means every file of the archive is there; the load checks the published md5s. A folder still
    carrying a stand-in's marker whose meta file changed has had a real download extracted over it: present."""
    folder = cifar_folder(name, root)
    if not all((folder / file).is_file() for file in cifar_files(name)):
        return "missing"
    if read_marker(folder) is None:
        return "present"
    return "stand-in" if marker_matches(folder, [cifar_source(name).meta["filename"]]) else "present"


def stand_ins_in_use(model_name: str, dataset_name: str) -> list[str]:
    """One line per stand-in these settings would use: the model and the dataset (lesson 00)."""
    found = []
    if "/" in model_name and not Path(model_name).expanduser().is_dir() and model_status(model_name) == "stand-in":
        found.append(f"the model {model_name} is a stand-in: random weights with the real shapes")
    if dataset_name in ("cifar10", "cifar100") and cifar_status(dataset_name) == "stand-in":
        found.append(f"{dataset_name} is a stand-in: generated images in its format")
    return found


def stand_in_banner(stand_ins: list[str]) -> str:
    """The banner a notebook prints at the top when it runs on stand-ins (lesson 00)."""
    rule = "=" * 100
    return "\n".join([rule, "STAND-INS: " + "; ".join(stand_ins) + ".",
                      f"Everything runs as it would on the real ones, but every accuracy here is {MEANINGLESS}.",
                      "`python -m helpers.course prefetch` (online) replaces them with the real model and data.", rule])


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, links followed (the hub cache links snapshots to blobs) (lesson 00)."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())
