"""CIFAR through `helpers.data.load_dataset`: every image keeps its own label, and a known image comes back at a
known index with its planes (R, G, B) and rows where the archive has them.

The archive is written in CIFAR's python format (pickled dicts with str keys, rows of 3,072 bytes: the
32 x 32 red plane, then green, then blue) with every image different, so each one can be found again by
its pixels.
"""
import pickle

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from helpers import caches, data
from helpers.data import cifar

CLASSES = ["plane", "car", "bird", "cat"]
PER_FILE = 40  # CIFAR-100 has one training file: 10% of it for validation must hold every class


def known_image() -> np.ndarray:
    """Red rises along each row, green down the columns, blue is flat: a transposed or mixed-up plane shows."""
    x = np.arange(32, dtype=np.uint8)
    red = np.tile(x * 8, (32, 1))
    green = red.T.copy()
    blue = np.full((32, 32), 200, dtype=np.uint8)
    return np.concatenate([red.ravel(), green.ravel(), blue.ravel()])


def write_archive(root, source):
    """Batches of distinct random images with shuffled labels; the test batch holds `known_image` at row 5."""
    rng = np.random.default_rng(0)
    folder = root / source.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if source is CIFAR10 else "fine_labels"  # str keys, as Python 2 wrote them
    rows, labels = {}, {}
    for filename, _ in source.train_list + source.test_list:
        batch_labels = rng.permutation(np.arange(PER_FILE) % len(CLASSES)).tolist()
        batch = rng.integers(0, 256, (PER_FILE, 3072), dtype=np.uint8)
        if filename == source.test_list[0][0]:
            batch[5] = known_image()
        (folder / filename).write_bytes(pickle.dumps({"data": batch, label_key: batch_labels}))
        for row, label in zip(batch, batch_labels):
            rows[row.tobytes()] = label
        labels[filename] = batch_labels
    meta = {source.meta["key"]: CLASSES}
    (folder / source.meta["filename"]).write_bytes(pickle.dumps(meta))
    return rows, labels


@pytest.mark.parametrize("kind", ["real", "stand-in"])
@pytest.mark.parametrize("name, source", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_every_image_keeps_its_label_and_a_known_image_is_where_the_archive_has_it(tmp_path, monkeypatch, name,
                                                                                  source, kind):
    label_of, labels = write_archive(tmp_path, source)
    if kind == "real":  # read by torchvision, which checks each file's md5: here the generated archive's
        folder = tmp_path / source.base_folder
        for files in ("train_list", "test_list"):
            monkeypatch.setattr(source, files, [[f, cifar.file_md5(folder / f)] for f, _ in getattr(source, files)])
        monkeypatch.setattr(source, "meta", {**source.meta, "md5": cifar.file_md5(folder / source.meta["filename"])})
    else:  # read by the kit's numpy-only unpickler, after its own sha256 check
        caches.write_marker(tmp_path / source.base_folder, name, caches.cifar_files(name))
    splits = data.load_dataset(name, root=tmp_path, download=False)
    assert splits.classes == CLASSES
    seen = []
    for split in (splits.train, splits.val, splits.test):
        for index in range(len(split)):
            image = split.image(index)
            assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
            key = image.numpy().reshape(-1).tobytes()
            assert split.labels[index] == label_of[key], f"{name}: image {index} lost its label"
            seen.append(key)
    assert sorted(seen) == sorted(label_of)  # every archive image once, in one split
    assert len(splits.test) == PER_FILE and len(splits.train) + len(splits.val) == PER_FILE * len(source.train_list)

    image, label = splits.test.image(5), splits.test.labels[5]  # the test batch keeps the archive's order
    assert label == labels[source.test_list[0][0]][5]
    assert image[0, 3].tolist() == [8 * x for x in range(32)]  # red: row 3 rises left to right
    assert image[1, :, 3].tolist() == [8 * y for y in range(32)]  # green: column 3 rises top to bottom
    assert image[2].unique().tolist() == [200]
    assert splits.test[5][1] == label  # the (image, label) item agrees
