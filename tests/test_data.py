import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from helpers import data


# ---------------------------------------------------------------- data the tests make
def write_cifar(root, source, classes, per_file=40, seed=0):
    """A tiny archive in the real CIFAR python format (pickled dicts of bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / source.base_folder
    folder.mkdir(parents=True)
    label_key = b"labels" if source is CIFAR10 else b"fine_labels"
    for filename, _ in source.train_list + source.test_list:
        labels = [i % len(classes) for i in range(per_file)]
        batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: labels}
        (folder / filename).write_bytes(pickle.dumps(batch))
    meta = {source.meta["key"].encode(): [c.encode() for c in classes]}
    (folder / source.meta["filename"]).write_bytes(pickle.dumps(meta))
    return folder


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def colour_image(seed, size=(24, 24)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture
def messy_folder(tmp_path):
    """Two clean classes plus every usual problem of a folder of photos."""
    root = tmp_path / "photos"
    for label in ("cat", "dog"):
        for i in range(6):
            save(root / label / f"{i}.png", colour_image(hash((label, i)) % 1000))
    save(root / "cat" / "grey.png", colour_image(1).convert("L"))
    save(root / "cat" / "alpha.png", colour_image(2).convert("RGBA"))
    save(root / "dog" / "palette.png", colour_image(3).convert("P"))
    save(root / "dog" / "cmyk.jpg", colour_image(4).convert("CMYK"))
    save(root / "dog" / "tiny.png", colour_image(5, size=(4, 4)))
    good_jpeg = save(tmp_path / "full.jpg", colour_image(6, size=(64, 64)))
    (root / "cat" / "truncated.jpg").write_bytes(good_jpeg.read_bytes()[:300])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "copy_of_cat_0.png").write_bytes((root / "cat" / "0.png").read_bytes())
    (root / "empty_class").mkdir()
    return root


# ---------------------------------------------------------------- digits and splits
def test_digits_are_32px_rgb_uint8_with_ten_classes():
    dataset = data.load_digits()
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert len(dataset) == 1797 and dataset.classes == [str(d) for d in range(10)]
    assert image.max() > 200 and image.min() == 0  # the full intensity range is used


def test_splits_are_disjoint_stratified_seeded_and_complete():
    labels = np.repeat(np.arange(5), 40)
    train, val, test = data.stratified_split(labels, 0.15, 0.15, seed=3)
    assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
    assert sorted([*train, *val, *test]) == list(range(200))
    assert np.bincount(labels[test]).tolist() == [6] * 5
    assert data.stratified_split(labels, 0.15, 0.15, seed=3) == (train, val, test)
    assert data.stratified_split(labels, 0.15, 0.15, seed=4)[2] != test


def test_bad_split_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to less than 1"):
        data.stratified_split([0, 1] * 10, 0.6, 0.5, seed=0)


def test_load_dataset_caps_sizes_keeping_balance():
    splits = data.load_dataset("digits", train_size=100, eval_size=50)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 50, 50)
    assert sorted(set(splits.train.labels)) == list(range(10))
    assert max(np.bincount(splits.train.labels)) - min(np.bincount(splits.train.labels)) <= 1


def test_subset_smaller_than_class_count_is_refused():
    with pytest.raises(ValueError, match="cannot hold all 10 classes"):
        data.load_dataset("digits", train_size=5)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="digits, cifar10, cifar100, imagefolder:<path>"):
        data.load_dataset("mnist")


# ---------------------------------------------------------------- transforms
def test_transforms_follow_the_image_processor(tiny_model_dir):
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 48, "width": 40}, image_mean=[0.2, 0.3, 0.4], image_std=[0.5] * 3)
    spec = data.ImageSpec.from_processor(processor)
    assert spec == data.ImageSpec((48, 40), (0.2, 0.3, 0.4), (0.5, 0.5, 0.5))
    splits = data.load_dataset("digits", train_size=20, eval_size=20).with_transforms(data.eval_transform(spec))
    image, _ = splits.val[0]
    assert image.shape == (3, 48, 40) and image.dtype == torch.float32
    raw = splits.val.image(0).float() / 255
    expected_black = (0 - 0.2) / 0.5
    assert image[0].min().item() == pytest.approx(expected_black, abs=1e-5) and raw.min() == 0


# ---------------------------------------------------------------- CIFAR, from a tiny archive in the real format
@pytest.mark.parametrize("name, source", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_reader_on_a_tiny_archive(tmp_path, name, source):
    classes = [f"class{i}" for i in range(4)]
    folder = write_cifar(tmp_path, source, classes)
    splits = data.load_dataset(name, root=tmp_path, download=False)
    n_train = 40 * len(source.train_list)
    assert len(splits.train) + len(splits.val) == n_train and len(splits.test) == 40
    assert splits.classes == classes
    first = pickle.loads((folder / source.train_list[0][0]).read_bytes())[b"data"][0]
    all_train = torch.cat([splits.train.images, splits.val.images])
    assert any(torch.equal(img.flatten(), torch.from_numpy(first)) for img in all_train)


def test_cifar_offline_and_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="offline.*connect once.*digits"):
        data.load_dataset("cifar10", root=tmp_path, download=False)


# ---------------------------------------------------------------- your own folder
def test_scan_reports_every_problem_with_its_path(messy_folder):
    scan = data.scan_folder(messy_folder)
    found = {problem.path.name: (problem.issue, problem.action) for problem in scan.problems}
    assert found["truncated.jpg"][1] == "skipped" and "unreadable" in found["truncated.jpg"][0]
    assert found["notes.txt"][1] == "skipped"
    assert found["grey.png"] == ("mode L", "converted to RGB")
    assert found["alpha.png"] == ("mode RGBA", "converted to RGB")
    assert found["palette.png"] == ("mode P", "converted to RGB")
    assert found["cmyk.jpg"] == ("mode CMYK", "converted to RGB")
    assert "tiny image 4x4" in found["tiny.png"][0]
    assert "duplicate" in found["copy_of_cat_0.png"][0] and found["copy_of_cat_0.png"][1].startswith("skipped")
    assert found["empty_class"] == ("empty class folder", "class left out")
    assert scan.classes == ["cat", "dog"]
    assert {p.name for p in scan.skipped} == {"truncated.jpg", "notes.txt", "copy_of_cat_0.png"}


def test_image_folder_loads_every_mode_as_rgb_and_skips_the_unreadable(messy_folder):
    with pytest.warns(UserWarning, match="truncated.jpg"):
        splits = data.load_dataset(f"imagefolder:{messy_folder}", seed=0)
    everything = [*splits.train.paths, *splits.val.paths, *splits.test.paths]
    assert len(everything) == len(set(everything)) == 6 + 6 + 5  # clean images + L, RGBA, P, CMYK, tiny
    for dataset in (splits.train, splits.val, splits.test):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape[0] == 3 and image.dtype == torch.uint8
            assert dataset.classes[label] == dataset.paths[i].parent.name


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder at .*one subfolder of images per class"):
        data.load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


def test_folder_with_one_class_is_a_clear_error(tmp_path):
    for i in range(3):
        save(tmp_path / "only" / f"{i}.png", colour_image(i))
    with pytest.raises(ValueError, match="at least two"):
        data.load_dataset(f"imagefolder:{tmp_path}")


def test_loader_batches_are_stacked_tensors():
    splits = data.load_dataset("digits", train_size=40, eval_size=20)
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    loader = data.make_loader(splits.train.with_transform(data.eval_transform(spec)), 16,
                              shuffle_generator=torch.Generator().manual_seed(0))
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(b[1]) for b in loader) == 40
