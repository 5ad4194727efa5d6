"""helpers.data.splits: exact split sizes, stratification, seeds, subsets, content hashes and leak reports."""
import re

import numpy as np
import pytest
import torch

from helpers import data
from helpers.data import splits


def labelled(counts, seed=0, size=4):
    """Distinct random images, counts[c] of class c."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = torch.randint(0, 256, (len(labels), 3, size, size), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return data.TensorImages(images, labels, [f"c{c}" for c in range(len(counts))])


@pytest.mark.parametrize("n, val_fraction, test_fraction, sizes", [
    (200, 0.15, 0.15, (140, 30, 30)),  # 70 / 15 / 15 of the whole, not 15% of what the test split left
    (200, 0.1, 0.3, (120, 20, 60)),
    (100, 0.5, 0.25, (25, 50, 25)),
    (100, 0.07, 0.07, (86, 7, 7)),  # 0.07 * 100 is 7.000000000000001 in floats: still 7 images
    (116, 0.15, 0.15, (80, 18, 18)),  # 17.4 images: rounded up, like sklearn's test split
])
def test_split_sizes_are_the_fractions_of_the_whole(n, val_fraction, test_fraction, sizes):
    labels = np.arange(n) % 2
    train, val, test = splits.stratified_split(labels, val_fraction, test_fraction, seed=0)
    assert (len(train), len(val), len(test)) == sizes
    assert sorted([*train, *val, *test]) == list(range(n))
    assert train == sorted(train) and val == sorted(val) and test == sorted(test)


@pytest.mark.parametrize("seed", range(6))
def test_every_split_keeps_the_class_shares_even_for_rare_classes(seed):
    labels = np.array([0] * 160 + [1] * 40)  # 80% / 20%
    for part, size in zip(splits.stratified_split(labels, 0.15, 0.15, seed), (140, 30, 30)):
        assert np.bincount(labels[part]).tolist() == [size * 4 // 5, size // 5]


def test_the_seed_decides_every_split():
    labels = np.arange(200) % 4
    first = splits.stratified_split(labels, 0.15, 0.15, seed=1)
    assert splits.stratified_split(labels, 0.15, 0.15, seed=1) == first
    other = splits.stratified_split(labels, 0.15, 0.15, seed=2)
    assert other[0] != first[0] and other[1] != first[1] and other[2] != first[2]


@pytest.mark.parametrize("val_fraction, test_fraction", [
    (0.0, 0.2), (0.2, 0.0), (1.0, 0.2), (0.2, 1.0), (0.5, 0.5), (0.6, 0.5), (-0.1, 0.2), (0.2, -0.1),
])
def test_bad_fractions_are_refused(val_fraction, test_fraction):
    message = "val_fraction and test_fraction must be in (0, 1) and sum to less than 1."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        splits.stratified_split([0, 1] * 50, val_fraction, test_fraction, seed=0)


def test_fractions_just_inside_the_limits_are_accepted():
    train, val, test = splits.stratified_split([0, 1] * 50, 0.49, 0.49, seed=0)
    assert (len(train), len(val), len(test)) == (2, 49, 49)


def test_counts_of_a_million_images_are_rounded_past_the_float_noise():
    # 0.28 * 1_092_275 is 305837.00000000006: noise at the tenth digit must not round the count up
    assert splits._count_of(0.28, 1_092_275) == 305837


def test_split_dataset_cuts_70_15_15_and_keeps_classes_and_source():
    dataset = labelled([40, 60])
    result = splits.split_dataset(dataset, "two classes", seed=0)
    assert (len(result.train), len(result.val), len(result.test)) == (70, 15, 15)
    assert result.classes == ["c0", "c1"] and result.source == "two classes"
    expected = splits.stratified_split(dataset.labels, 0.15, 0.15, 0)
    for part, indices in zip((result.train, result.val, result.test), expected):
        assert torch.equal(part.images, dataset.images[indices]) and part.labels == [dataset.labels[i] for i in indices]
    other = splits.split_dataset(dataset, "x", seed=0, val_fraction=0.1, test_fraction=0.3)
    assert (len(other.train), len(other.val), len(other.test)) == (60, 10, 30)
    assert not torch.equal(splits.split_dataset(dataset, "x", seed=1).test.images, result.test.images)
    assert str(result) == "two classes: 2 classes; train 70, val 15, test 15 images"


def test_with_transforms_applies_train_to_train_and_eval_to_the_others():
    result = splits.split_dataset(labelled([20, 20]), "x", seed=0)

    def train(image):
        return "train"

    def evaluate(image):
        return "eval"

    both = result.with_transforms(train, evaluate)
    assert (both.train[0][0], both.val[0][0], both.test[0][0]) == ("train", "eval", "eval")
    one = result.with_transforms(train)
    assert (one.train[0][0], one.val[0][0], one.test[0][0]) == ("train", "train", "train")
    assert one.classes == result.classes and result.train.transform is None  # the original is left alone


def test_stratified_subset_keeps_the_balance_and_all_when_big_enough():
    dataset = labelled([30, 60, 90])
    subset = splits.stratified_subset(dataset, 60, seed=0)
    assert np.bincount(subset.labels).tolist() == [10, 20, 30]
    assert torch.equal(splits.stratified_subset(dataset, 60, seed=0).images, subset.images)
    assert not torch.equal(splits.stratified_subset(dataset, 60, seed=1).images, subset.images)
    for size in (None, 180, 500):
        assert splits.stratified_subset(dataset, size, seed=0) is dataset
    for size, counts in ((179, [30, 60, 89]), (178, [30, 59, 89])):  # one image left out of the largest classes
        nearly_all = splits.stratified_subset(dataset, size, seed=0)
        assert np.bincount(nearly_all.labels).tolist() == counts
        assert torch.equal(splits.stratified_subset(dataset, size, seed=0).images, nearly_all.images)
    assert len(splits.stratified_subset(dataset, 3, seed=0)) == 3  # one per class is enough
    rows = [tuple(dataset.images[i].flatten().tolist()) for i in range(len(dataset))]
    kept = [rows.index(tuple(image.flatten().tolist())) for image in subset.images]
    assert kept == sorted(kept)  # in the dataset's order


def test_leaving_out_as_many_images_as_classes_is_sklearns_stratified_draw():
    # three left out of three classes is sklearn's draw, which leaves them out in proportion (0, 1, 2);
    # the by-hand branch (one out of each of the largest classes) is only for fewer than the class count
    kept = splits.stratified_subset(labelled([30, 60, 90]), 177, seed=1)
    assert np.bincount(kept.labels).tolist() == [30, 59, 88]


def test_nearly_all_of_many_classes_leaves_one_out_of_the_first_of_the_largest():
    counts = [3, 2, 2, 1, 1, 1, 1, 1, 1, 3, 2, 3, 2, 2, 3, 3, 2, 2, 2, 3]  # twenty classes, six tied largest
    kept = np.bincount(splits.stratified_subset(labelled(counts), 38, seed=0).labels).tolist()
    assert kept == [2] + counts[1:9] + [2] + counts[10:]  # classes 0 and 9, the first two of the six


def test_a_subset_smaller_than_the_class_count_says_so():
    message = "A subset of 2 images cannot hold all 3 classes: ask for more."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        splits.stratified_subset(labelled([5, 5, 5]), 2, seed=0)


def test_content_hash_depends_on_the_pixels_and_the_shape():
    images = torch.zeros(3, 3, 2, 8, dtype=torch.uint8)
    images[1, 0, 0, 0] = 1
    flat = data.TensorImages(images, [0, 0, 0], ["a"])
    square = data.TensorImages(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [0], ["a"])  # same bytes, other shape
    hashes = [splits.content_hash(flat, i) for i in range(3)]
    assert hashes[0] == hashes[2] != hashes[1] and splits.content_hash(square, 0) != hashes[0]
    assert re.fullmatch("[0-9a-f]{64}", hashes[0])


def test_content_hash_of_a_file_is_the_files_hash(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    files = data.FileImages([tmp_path / "a.png"], [0], ["a"])
    assert splits.content_hash(files, 0) == data.file_hash(tmp_path / "a.png")


def three_splits(train, val, test):
    return data.Splits(train, val, test, ["c0"], "test")


def test_find_leaks_names_each_image_seen_in_an_earlier_split():
    images = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pick = lambda *rows: data.TensorImages(images[list(rows)], [0] * len(rows), ["c0"])  # noqa: E731
    report = splits.find_leaks(three_splits(pick(0, 1, 2), pick(3, 1), pick(4, 2, 0, 5)))
    assert [str(leak) for leak in report.leaks] == [
        "same content: train #1 and val #1", "same content: train #2 and test #1", "same content: train #0 and test #2"]
    assert report.sizes == {"train": 3, "val": 2, "test": 4} and not report.ok
    within = splits.find_leaks(three_splits(pick(0, 0), pick(1), pick(2)))  # a repeat inside one split is no leak
    assert within.ok and within.leaks == []


def test_find_leaks_on_files_reports_the_same_file_once_and_copies_by_content(tmp_path):
    from PIL import Image

    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4), colour).save(tmp_path / name / "x.png")
    (tmp_path / "c" / "copy.png").write_bytes((tmp_path / "a" / "x.png").read_bytes())
    files = lambda *paths: data.FileImages([tmp_path / p for p in paths], [0] * len(paths), ["c0"])  # noqa: E731
    report = splits.find_leaks(three_splits(files("a/x.png", "b/x.png"), files("b/x.png"), files("c/copy.png")))
    assert [str(leak) for leak in report.leaks] == ["same file: train b/x.png and val b/x.png",
                                                    "same content: train a/x.png and test c/copy.png"]


def test_the_leak_report_lists_ten_leaks_and_counts_the_rest():
    sizes = {"train": 12, "val": 12, "test": 0}
    clean = splits.LeakageReport([], sizes)
    assert clean.ok
    assert str(clean) == "no leaks: no file and no identical content in two splits (train 12, val 12, test 0)"
    leaks = [splits.Leak("same content", f"train #{i}", f"val #{i}") for i in range(12)]
    lines = str(splits.LeakageReport(leaks, sizes)).splitlines()
    assert lines[0] == "12 leak(s) between splits (train 12, val 12, test 0):"
    assert lines[1:11] == [f"  same content: train #{i} and val #{i}" for i in range(10)]
    assert lines[11:] == ["  ... and 2 more"]
    assert len(str(splits.LeakageReport(leaks[:10], sizes)).splitlines()) == 11  # exactly ten: nothing more to say
    assert str(splits.LeakageReport(leaks[:11], sizes)).splitlines()[10:] == ["  same content: train #9 and val #9",
                                                                            "  ... and 1 more"]


def test_class_counts_include_empty_classes():
    dataset = data.TensorImages(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), [0, 2, 2, 0], ["a", "b", "c", "d"])
    assert splits.class_counts(dataset).tolist() == [2, 0, 2, 0]


def test_describe_item_names_a_file_by_its_folder_and_an_image_by_its_index(tmp_path):
    files = data.FileImages([tmp_path / "cat" / "1.png"], [0], ["cat"])
    assert splits.describe_item("val", files, 0) == "val cat/1.png"
    assert splits.describe_item("test", labelled([3]), 2) == "test #2"
