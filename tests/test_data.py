import os
import pickle
import sys
import warnings
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from helpers import data, plots
from helpers.lessons import l03_datasets as l03


# ---------------------------------------------------------------- data the tests make
def write_cifar(root, source, classes, per_file=40, seed=0):
    """A tiny archive in the real CIFAR python format (pickled dicts; str keys, as torchvision reads the real ones)."""
    rng = np.random.default_rng(seed)
    folder = root / source.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if source is CIFAR10 else "fine_labels"
    for filename, _ in source.train_list + source.test_list:
        labels = [i % len(classes) for i in range(per_file)]
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: labels}
        (folder / filename).write_bytes(pickle.dumps(batch))
    meta = {source.meta["key"]: list(classes)}
    (folder / source.meta["filename"]).write_bytes(pickle.dumps(meta))
    return folder


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def colour_image(seed, size=(24, 24)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def clean_folder(root, classes=("cat", "dog"), per_class=6):
    """A class-per-subfolder tree of distinct random colour PNGs."""
    for c, label in enumerate(classes):
        for i in range(per_class):
            save(root / label / f"{i}.png", colour_image(1000 * c + i))  # distinct: no two alike
    return root


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes of six photos with every usual problem planted; returns (root, {problem: path})."""
    root = clean_folder(tmp_path / "photos")
    return root, l03.plant_messy_folder(root)


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
def test_cifar_reader_on_a_tiny_archive(tmp_path, name, source, monkeypatch):
    classes = [f"class{i}" for i in range(4)]
    folder = write_cifar(tmp_path, source, classes)
    with pytest.raises(ValueError, match="published checksums"):  # torchvision checks every file's md5 first
        data.load_dataset(name, root=tmp_path, download=False)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)  # as if the published files
    splits = data.load_dataset(name, root=tmp_path, download=False)
    n_train = 40 * len(source.train_list)
    assert len(splits.train) + len(splits.val) == n_train and len(splits.test) == 40
    assert splits.classes == classes and not splits.stand_in
    first = pickle.loads((folder / source.train_list[0][0]).read_bytes())["data"][0]
    all_train = torch.cat([splits.train.images, splits.val.images])
    assert any(torch.equal(img.flatten(), torch.from_numpy(first)) for img in all_train)


@pytest.mark.parametrize("name, source", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_stand_in_reader_on_a_tiny_archive(tmp_path, name, source):
    from helpers import caches

    classes = [f"class{i}" for i in range(4)]
    folder = write_cifar(tmp_path, source, classes)
    caches.write_marker(folder, f"{name} made by a test", caches.cifar_files(name))
    splits = data.load_dataset(name, root=tmp_path, download=False)
    assert splits.stand_in and splits.classes == classes and len(splits.test) == 40
    first = pickle.loads((folder / source.train_list[0][0]).read_bytes())["data"][0]
    all_train = torch.cat([splits.train.images, splits.val.images])
    assert any(torch.equal(img.flatten(), torch.from_numpy(first)) for img in all_train)


def test_cifar_offline_and_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="offline.*prefetch.*digits"):
        data.load_dataset("cifar10", root=tmp_path, download=False)


# ---------------------------------------------------------------- your own folder
def test_scan_reports_every_planted_problem_with_its_path(messy_folder):
    root, planted = messy_folder
    scan = data.scan_folder(root)
    found = {problem.path: (problem.issue, problem.action) for problem in scan.problems}
    assert len(found) == len(scan.problems) == len(planted)
    issue, action = found[planted["truncated JPEG"]]
    assert "unreadable" in issue and "truncated" in issue and action == "skipped"
    assert found[planted["not an image"]][1] == "skipped"
    assert found[planted["grayscale PNG (mode L)"]] == ("mode L", "converted to RGB")
    assert found[planted["RGBA PNG"]] == ("mode RGBA", "converted to RGB")
    assert found[planted["palette PNG (mode P)"]] == ("mode P", "converted to RGB")
    assert found[planted["CMYK JPEG"]] == ("mode CMYK", "converted to RGB")
    assert found[planted["tiny image (8x8)"]][0] == "tiny image 8x8"
    issue, action = found[planted["exact duplicate across classes"]]
    assert issue == "exact duplicate of cat/0.png" and action.startswith("skipped")
    assert found[planted["empty class folder"]] == ("empty class folder", "class left out")
    assert scan.classes == ["cat", "dog"] and len(scan.paths) == 11  # 12 photos, one truncated
    skipped = ("truncated JPEG", "not an image", "exact duplicate across classes")
    assert set(scan.skipped) == {planted[problem] for problem in skipped}
    assert all(f"{p.path.relative_to(root)}: {p.issue}" in scan.report() for p in scan.problems)


def test_planting_needs_two_classes_with_enough_images(tmp_path):
    with pytest.raises(ValueError, match="two class folders with at least 4 images"):
        l03.plant_messy_folder(clean_folder(tmp_path, classes=("only",)))


def test_image_folder_loads_every_mode_as_rgb_and_skips_the_unreadable(messy_folder):
    root, planted = messy_folder
    with pytest.warns(UserWarning, match="truncated"):
        splits = data.load_dataset(f"imagefolder:{root}", seed=0)
    everything = [*splits.train.paths, *splits.val.paths, *splits.test.paths]
    assert len(everything) == len(set(everything)) == 11
    assert planted["truncated JPEG"] not in everything and planted["exact duplicate across classes"] not in everything
    for dataset in (splits.train, splits.val, splits.test):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape[0] == 3 and image.dtype == torch.uint8
            assert dataset.classes[label] == dataset.paths[i].parent.name


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder at .*one subfolder of images per class"):
        data.load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "a_file.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="No folder at"):
        data.scan_folder(tmp_path / "a_file.png")


def test_folder_with_one_class_is_a_clear_error(tmp_path):
    for i in range(3):
        save(tmp_path / "only" / f"{i}.png", colour_image(i))
    with pytest.raises(ValueError, match="at least two"):
        data.load_dataset(f"imagefolder:{tmp_path}")


def test_empty_class_folder_is_left_out_with_a_warning(tmp_path):
    clean_folder(tmp_path, classes=("cat", "dog", "eel"), per_class=7)
    (tmp_path / "fox").mkdir()
    with pytest.warns(UserWarning, match="fox: empty class folder -> class left out"):
        splits = data.load_dataset(f"imagefolder:{tmp_path}")
    assert splits.classes == ["cat", "dog", "eel"]


def test_images_outside_class_folders_are_reported(tmp_path):
    clean_folder(tmp_path)
    save(tmp_path / "stray.png", colour_image(7))
    scan = data.scan_folder(tmp_path)
    assert [(p.path.name, p.issue) for p in scan.problems] == [("stray.png", "not inside a class folder")]
    assert scan.skipped == [tmp_path / "stray.png"]


def test_a_class_whose_files_are_all_unreadable_is_left_out_with_a_line(tmp_path):
    clean_folder(tmp_path, per_class=4)
    (tmp_path / "eel").mkdir()
    for i in range(3):
        (tmp_path / "eel" / f"{i}.png").write_bytes(b"not a PNG")
    with pytest.warns(UserWarning, match="eel: no readable image among its 3 files -> class left out"):
        dataset = data.load_image_folder(tmp_path)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 8


def test_links_back_into_the_tree_are_skipped_not_followed(tmp_path):
    root = clean_folder(tmp_path / "photos", per_class=4)
    (root / "all").symlink_to(root)  # followed, it would file every image under 'all'
    (root / "cat" / "up").symlink_to(tmp_path)  # an ancestor of the root: a loop
    (root / "cat" / "dogs_too").symlink_to(root / "dog")  # another class: dog images labelled cat
    scan = data.scan_folder(root)
    assert scan.classes == ["cat", "dog"] and len(scan.paths) == 8
    assert all(scan.classes[label] == path.parent.name for path, label in zip(scan.paths, scan.labels))
    found = {str(p.path.relative_to(root)): (p.issue, p.action) for p in scan.problems}
    assert found == {
        "all": (f"link to the scanned folder itself ({root.resolve()})", LINK_ACTION),
        "cat/up": (f"link to a folder above the scanned folder ({tmp_path.resolve()})", LINK_ACTION),
        "cat/dogs_too": (f"link to a folder inside the scanned folder ({(root / 'dog').resolve()})", LINK_ACTION),
    }


LINK_ACTION = "skipped, so no image is counted twice or under another class"


def test_files_under_hidden_folders_are_not_trained_under_their_class(tmp_path):
    root = clean_folder(tmp_path, per_class=4)
    save(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", colour_image(99))
    save(root / ".cache" / "thumb.png", colour_image(98))
    scan = data.scan_folder(root)
    assert len(scan.paths) == 8 and not any(part.startswith(".") for p in scan.paths for part in p.parts[-2:])
    assert "  cat/.ipynb_checkpoints: hidden folder -> skipped; its files are not images of a class" in scan.report()
    assert "  .cache: hidden folder -> skipped" in scan.report()


def test_a_class_with_too_few_images_for_three_splits_is_left_out_with_a_line(tmp_path):
    clean_folder(tmp_path, classes=("cat", "dog", "eel"), per_class=7)
    save(tmp_path / "fox" / "0.png", colour_image(500))
    with pytest.warns(UserWarning, match=r"fox: only 1 image\(s\): a class needs 3, one each for training, "
                                         r"validation and test -> class left out; add images to keep it"):
        splits = data.load_dataset(f"imagefolder:{tmp_path}")
    assert splits.classes == ["cat", "dog", "eel"]


def test_export_writes_a_folder_that_loads_back_pixel_for_pixel(tmp_path):
    digits = data.load_digits().subset(range(60))
    root = data.export_image_folder(digits, tmp_path / "digits", per_class=3)
    assert sorted(p.name for p in root.iterdir()) == digits.classes
    assert all(len(list((root / c).iterdir())) == 3 for c in digits.classes)
    scan = data.scan_folder(root)
    assert not scan.problems
    index = int(scan.paths[0].stem)
    assert torch.equal(data.read_rgb(scan.paths[0]), digits.image(index))
    assert scan.classes[scan.labels[0]] == digits.classes[digits.labels[index]]
    with pytest.raises(ValueError, match="not empty"):
        data.export_image_folder(digits, root)


# ---------------------------------------------------------------- leakage
def test_clean_splits_have_no_leaks_and_a_copy_put_back_is_found(messy_folder):
    root, planted = messy_folder
    with pytest.warns(UserWarning):
        splits = data.load_dataset(f"imagefolder:{root}", seed=0)
    assert data.find_leaks(splits).ok
    copy, original = planted["exact duplicate across classes"], root / "cat" / "0.png"
    target = "val" if original in splits.test.paths else "test"  # a split that does not hold the original
    held = getattr(splits, target)
    leaky = replace(splits, **{target: data.FileImages([*held.paths, copy], [*held.labels, 1], splits.classes)})
    report = data.find_leaks(leaky)
    assert not report.ok and len(report.leaks) == 1
    leak = report.leaks[0]
    assert leak.kind == "same content" and leak.first.endswith(" cat/0.png")
    assert leak.second == f"{target} dog/{copy.name}"
    assert "1 leak(s)" in str(report) and f"{target} {len(held) + 1}" in str(report)


def test_the_same_file_in_two_splits_is_a_leak(tmp_path):
    clean_folder(tmp_path)
    dataset = data.load_image_folder(tmp_path)
    splits = data.Splits(dataset.subset([0, 1, 2, 6, 7]), dataset.subset([3, 8]), dataset.subset([2, 9]),
                         dataset.classes)
    report = data.find_leaks(splits)
    assert [(leak.kind, leak.first, leak.second) for leak in report.leaks] == [
        ("same file", "train cat/2.png", "test cat/2.png")]


def test_leaks_in_memory_datasets_are_found_by_pixels():
    images = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images[5] = images[0]
    dataset = data.TensorImages(images, [0, 1, 0, 1, 0, 1], ["a", "b"])
    splits = data.Splits(dataset.subset([0, 1, 2]), dataset.subset([3, 4]), dataset.subset([5]), dataset.classes)
    assert [str(leak) for leak in data.find_leaks(splits).leaks] == ["same content: train #0 and test #0"]


# ---------------------------------------------------------------- balance
def test_class_weights_favour_rare_classes_and_average_one_per_image():
    labels = [0] * 80 + [1] * 20
    weights = data.class_weights(labels)
    assert weights.tolist() == pytest.approx([100 / (2 * 80), 100 / (2 * 20)])
    assert weights[labels].mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Class\(es\) \[1\] have no images"):
        data.class_weights([0, 0, 2], num_classes=3)


def test_weighted_sampler_draws_classes_equally_often():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = data.weighted_sampler(labels, num_samples=4000, generator=torch.Generator().manual_seed(0))
    drawn = np.bincount(labels[list(sampler)])
    assert len(list(sampler)) == 4000 and 0.45 < drawn[1] / 4000 < 0.55
    dataset = data.TensorImages(torch.zeros(100, 3, 2, 2, dtype=torch.uint8), labels, ["a", "b"])
    loader = data.make_loader(dataset, 50, sampler=data.weighted_sampler(labels))
    assert sum(len(batch[1]) for batch in loader) == 100
    with pytest.raises(ValueError, match="either a shuffle_generator or a sampler"):
        data.make_loader(dataset, 50, sampler=data.weighted_sampler(labels), shuffle_generator=torch.Generator())


def test_long_tailed_subset_shrinks_classes_geometrically():
    subset = l03.long_tailed_subset(data.load_digits(), imbalance_ratio=10, seed=0)
    counts = data.class_counts(subset)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1)
    with pytest.raises(ValueError, match="imbalance_ratio must be 1 or more"):
        l03.long_tailed_subset(subset, 0.5, seed=0)


def test_class_balance_plot_has_one_bar_per_class_and_split():
    splits = data.load_dataset("digits", train_size=100, eval_size=50)
    fig = l03.plot_class_balance(splits)
    bars = fig.axes[0].patches
    assert len(bars) == 3 * 10
    assert sum(bar.get_height() for bar in bars[:10]) == pytest.approx(1.0)  # train shares sum to one
    plt.close(fig)


# ---------------------------------------------------------------- statistics and costs
def test_channel_mean_std_weighs_every_pixel_of_images_of_any_size(tmp_path):
    save(tmp_path / "a" / "red.png", Image.new("RGB", (2, 2), (255, 0, 0)))
    save(tmp_path / "b" / "green.png", Image.new("RGB", (4, 4), (0, 255, 0)))
    images = data.FileImages([tmp_path / "a" / "red.png", tmp_path / "b" / "green.png"], [0, 1], ["a", "b"])
    mean, std = data.channel_mean_std(images)
    assert mean == pytest.approx((4 / 20, 16 / 20, 0))
    assert std == pytest.approx((0.4, 0.4, 0), abs=1e-6)  # sqrt(p (1 - p)) for a two-valued channel


def test_resize_cost_counts_pixels_memory_and_tokens():
    digits = data.load_digits().subset(range(4))
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    threads = torch.get_num_threads()
    rows = l03.resize_cost(digits, spec, (32, 224), patch_sizes=(4, 16), n=4)
    assert torch.get_num_threads() == threads  # timed on one thread, then restored
    assert [row["pixels vs native"] for row in rows] == [1, 49]
    assert [row["tokens at patch 16 (+ CLS)"] for row in rows] == [5, 197]
    assert [row["tokens at patch 4 (+ CLS)"] for row in rows] == [65, 3137]
    assert rows[1]["KiB per image (float32)"] == 3 * 224 * 224 * 4 / 1024
    assert all(row["ms per image (resize + normalise)"] > 0 for row in rows)


def test_before_after_figure_names_both_sizes():
    image = data.load_digits().image(0)
    spec = data.ImageSpec((48, 48), (0.5,) * 3, (0.5,) * 3)
    fig = l03.plot_before_after(image, data.eval_transform(spec)(image), spec)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["before: 32x32 uint8", "after: 48x48 float32"]
    plt.close(fig)


def test_loader_options_compare_pinned_memory_only_with_cuda():
    without, with_cuda = l03.loader_options_to_compare(cuda=False), l03.loader_options_to_compare(cuda=True)
    assert [o.num_workers for o in without] == [0, 1, 1, 2, 2] and not any(o.pin_memory for o in without)
    assert len(with_cuda) == 10 and {o.pin_memory for o in with_cuda} == {False, True}
    assert not any(o.persistent_workers for o in without if o.num_workers == 0)


def test_throughput_has_one_row_per_option():
    digits = data.load_digits().subset(range(24))
    options = [l03.LoaderOptions(0), l03.LoaderOptions(1, persistent_workers=True)]
    rows = l03.measure_throughput(digits, batch_size=8, options=options, epochs=2, device="cpu")
    assert [(r["num_workers"], r["persistent_workers"]) for r in rows] == [(0, False), (1, True)]
    assert all(r["images/s"] > 0 and r["first batch, epoch 2 (s)"] >= 0 for r in rows)


def test_cpu_load_names_the_cores():
    assert l03.cpu_load().startswith(f"{os.cpu_count()} cores")


def test_markdown_table_formats_numbers_and_booleans():
    table = plots.markdown_table([{"workers": 2, "pinned": True, "images/s": 1234.56, "seconds": 0.012345}])
    assert table.splitlines() == ["| workers | pinned | images/s | seconds |", "|---|---|---|---|",
                                  "| 2 | yes | 1,235 | 0.0123 |"]


# ---------------------------------------------------------------- Hugging Face datasets
class FakeHubTable:
    """The few parts of a `datasets.Dataset` that `HubImages` uses: rows, columns, features, select."""

    def __init__(self, rows, names):
        self.rows = rows
        self.features = {"label": type("ClassLabel", (), {"names": names})()}

    def __getitem__(self, key):
        return [row[key] for row in self.rows] if isinstance(key, str) else self.rows[key]

    def select(self, indices):
        return FakeHubTable([self.rows[i] for i in indices], self.features["label"].names)


def test_hub_images_convert_every_mode_and_keep_labels():
    rows = [{"img": colour_image(i).convert(mode), "label": i % 2} for i, mode in enumerate(("L", "RGBA", "P", "RGB"))]
    images = data.HubImages(FakeHubTable(rows, ["even", "odd"]), "img", "label")
    assert images.labels == [0, 1, 0, 1] and images.classes == ["even", "odd"]
    assert all(images.image(i).shape == (3, 24, 24) and images.image(i).dtype == torch.uint8 for i in range(4))
    subset = images.subset([1, 3])
    assert subset.labels == [1, 1] and torch.equal(subset.image(1), images.image(3))


def test_missing_hf_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[datasets\]'"):
        data.load_hf_dataset("uoft-cs/cifar10")


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
