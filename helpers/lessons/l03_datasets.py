"""Lesson 03's companion: a messy folder to clean, class balance, loader speed, resize cost, checkers."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.course.checks import answer_of, checker
from helpers.data.folders import image_files
from helpers.data.images import LabeledImages, TensorImages
from helpers.data.loaders import make_loader
from helpers.data.splits import SPLIT_NAMES, Splits, class_counts, content_hash, find_leaks
from helpers.data.transforms import ImageSpec, channel_mean_std, eval_transform
from helpers.progress import progress_bar
from helpers.timing import machine_load, median_of_repeats


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
                       device: str | None = None, repeats: int = 3) -> list[dict]:
    """Images per second through a DataLoader for each of `options`, over `epochs` passes (worker start-up included),
    the median of `repeats` measurements.

    Each batch is copied to `device` (default: CUDA when available), as training does. Each row also
    gives the wait for the first batch of the first and of the last epoch (medians too): persistent
    workers skip the restart between epochs.
    """
    if epochs < 1 or len(dataset) == 0:
        raise ValueError("Measure at least one epoch over a dataset with at least one image.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for option in progress_bar(options or loader_options_to_compare(), desc="loader options", leave=False):
        measured = [_time_loader(dataset, batch_size, option, epochs, device) for _ in range(repeats)]
        rows.append({
            "num_workers": option.num_workers, "pin_memory": option.pin_memory,
            "persistent_workers": option.persistent_workers,
            **{key: float(np.median([m[key] for m in measured])) for key in measured[0]},
        })
    return rows


def _time_loader(dataset, batch_size: int, option: LoaderOptions, epochs: int, device: torch.device) -> dict:
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
    del loader  # shuts persistent workers down before the next measurement starts its own
    return {"images/s": epochs * len(dataset) / seconds,
            "first batch, epoch 1 (s)": first_waits[0], f"first batch, epoch {epochs} (s)": first_waits[-1]}


cpu_load = machine_load  # the name this lesson used before the helper moved to helpers.timing


def resize_cost(dataset: LabeledImages, spec: ImageSpec, sides, patch_sizes=(16,), n: int = 64,
                repeats: int = 5) -> list[dict]:
    """What feeding images at each square side costs: pixels, memory, resize time, ViT tokens.

    The time per image is the median of `repeats` passes over `n` images, on one thread as a DataLoader
    worker runs them.
    """
    images = [dataset.image(i) for i in range(min(n, len(dataset)))]
    native_side = images[0].shape[-1]
    threads = torch.get_num_threads()
    rows = []
    torch.set_num_threads(1)
    try:
        for side in sides:
            transform = eval_transform(replace(spec, size=(side, side)))
            seconds = median_of_repeats(lambda: _seconds_to_transform(transform, images), repeats)
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


def _seconds_to_transform(transform, images) -> float:
    started = time.perf_counter()
    for image in images:
        transform(image)
    return time.perf_counter() - started


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


def dataset_with_duplicates(seed: int = 0) -> TensorImages:
    """120 distinct random images in 4 classes plus 12 exact copies, 4 of them filed under another class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (120, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = [i % 4 for i in range(120)]
    copied = list(range(0, 24, 2))
    copy_labels = [(labels[i] + 1) % 4 if k % 3 == 0 else labels[i] for k, i in enumerate(copied)]
    return TensorImages(torch.cat([images, images[copied]]), labels + copy_labels, ["a", "b", "c", "d"])


@checker
def check_clean_split(make_splits) -> bool:
    """Exercise checker for `make_splits(dataset, seed) -> Splits`: True, or AssertionError saying what is wrong.

    Its dataset holds exact copies, some filed under another class. Two answers are right: keep one
    copy of each image under its first (original) label, or also drop the images whose copies
    disagree on the label (a conflict to review by hand). Keeping a copy's other label is wrong.
    """
    dataset = dataset_with_duplicates()
    first_label: dict[str, int] = {}
    labels_of: dict[str, set[int]] = {}
    for index, label in enumerate(dataset.labels):
        key = content_hash(dataset, index)
        first_label.setdefault(key, label)
        labels_of.setdefault(key, set()).add(label)
    conflicting = {key for key, labels in labels_of.items() if len(labels) > 1}
    splits = answer_of("make_splits(dataset, seed=0)", make_splits, dataset, 0)
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
    missing = set(first_label) - conflicting - set(every)
    if missing:
        raise AssertionError(f"{len(missing)} distinct image(s) without a label conflict are in no split: keep one "
                             "copy of every image (drop only the extra copies).")
    relabelled = sum(label != first_label[key] for name in SPLIT_NAMES
                     for key, label in split_items(getattr(splits, name)))
    if relabelled:
        raise AssertionError(f"{relabelled} image(s) carry the label of a copy filed under another class: keep the "
                             "first copy of each image (or drop images whose copies disagree on the label).")
    total = len(every)
    for name in ("val", "test"):
        size = len(getattr(splits, name))
        if abs(size - 0.15 * total) > 1.5:
            raise AssertionError(f"{name} holds {size / total:.1%} of the images: aim for 70/15/15. The second "
                                 "split is cut from what the first left, so scale its fraction to that rest.")
    overall = np.bincount([label for name in SPLIT_NAMES for label in getattr(splits, name).labels], minlength=4)
    for name in SPLIT_NAMES:
        counts = class_counts(getattr(splits, name))
        if np.abs(counts - overall / overall.sum() * counts.sum()).max() > 1.5:
            raise AssertionError(f"The {name} split has {counts.tolist()} images per class, out of step with the "
                                 "classes' shares of the whole: pass stratify=labels to each split.")
    if split_hashes(make_splits(dataset, 0)) != hashes:
        raise AssertionError("The same seed gave different splits: pass random_state=seed to every random step.")
    if split_hashes(answer_of("make_splits(dataset, seed=1)", make_splits, dataset, 1)) == hashes:
        raise AssertionError("Seeds 0 and 1 gave the same splits: use the seed argument, not a fixed number.")
    dropped = len(conflicting - set(every))
    left_out = f" ({dropped} with conflicting labels left out for review)" if dropped else ""
    print(f"Correct: {total} distinct images{left_out}, stratified {[len(hashes[n]) for n in SPLIT_NAMES]}, seeded, "
          "and no image in two splits.")
    return True


def split_items(dataset: LabeledImages) -> list[tuple[str, int]]:
    """(content hash, label) of every item of `dataset`."""
    return [(content_hash(dataset, i), dataset.labels[i]) for i in range(len(dataset))]


def split_hashes(splits: Splits) -> dict[str, list[str]]:
    return {name: sorted(content_hash(getattr(splits, name), i) for i in range(len(getattr(splits, name))))
            for name in SPLIT_NAMES}


def channel_stats_dataset() -> TensorImages:
    """The checker's 24 images of 6x6: each channel has its own level, brightness varies between images."""
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor([40.0, 120.0, 200.0]).view(1, 3, 1, 1)
    brightness = torch.linspace(-30, 30, 24).view(-1, 1, 1, 1)
    noise = torch.randn(24, 3, 6, 6, generator=generator) * torch.tensor([10.0, 25.0, 5.0]).view(1, 3, 1, 1)
    images = (base + brightness + noise).clamp(0, 255).round().to(torch.uint8)
    return TensorImages(images, [0] * 24, ["only"])


@checker
def check_channel_stats(channel_stats) -> bool:
    """Exercise checker for `channel_stats(dataset) -> (mean, std)`, 3 numbers each on the [0, 1] scale."""
    dataset = channel_stats_dataset()
    images = dataset.images
    expected_mean, expected_std = (np.array(v) for v in channel_mean_std(dataset))
    answer = answer_of("channel_stats(dataset)", channel_stats, dataset)
    try:
        mean, std = (np.asarray(v, dtype=float).reshape(-1) for v in answer)
    except (TypeError, ValueError):
        raise AssertionError("Return two things, (mean, std), each with one number per channel.") from None
    if mean.shape != (3,) or std.shape != (3,):
        raise AssertionError(f"Return (mean, std) with one number per channel (3 each), "
                             f"got {mean.size} and {std.size}.")
    if np.allclose(mean, expected_mean * 255, atol=0.3):
        raise AssertionError("The mean is on the 0-255 scale: divide the uint8 pixels by 255 first.")
    if not np.allclose(mean, expected_mean, atol=1e-3):
        raise AssertionError(f"The means {mean.round(3).tolist()} are off: average each channel over every pixel of "
                             "every image (one number per channel, on the [0, 1] scale).")
    per_image_std = (images.double() / 255).std((2, 3), correction=0).mean(0).numpy()
    if np.allclose(std, per_image_std, atol=1e-3):
        raise AssertionError("That is the average of per-image stds: take the std over all pixels of all images "
                             "together (E[x^2] - E[x]^2), which also counts differences between images.")
    if np.allclose(std, expected_std**2, atol=1e-4):
        raise AssertionError("That is the variance: the std is its square root.")
    if not np.allclose(std, expected_std, atol=2e-3):
        raise AssertionError(f"The stds {std.round(3).tolist()} are off: take the square root of E[x^2] - E[x]^2 "
                             "per channel, over all pixels of all images.")
    print(f"Correct: mean {mean.round(3).tolist()}, std {std.round(3).tolist()} per channel.")
    return True


NEEDS_A_PERSON = ("exact duplicate across classes", "empty class folder")  # no rule can decide these
FIXED_BY_READING = ("grayscale PNG (mode L)", "palette PNG (mode P)", "CMYK JPEG")  # lossless conversions to RGB


@checker
def check_needs_review(names) -> bool:
    """Exercise checker: `names` are the planted problems (keys of `plant_messy_folder`'s result) that must go to a
    person rather than be handled by a rule; judgement calls may go either way."""
    if isinstance(names, str) or not all(isinstance(name, str) for name in names or [None]):
        raise AssertionError("Give a list (or set) of problem names, the keys of `planted`.")
    names = set(names)
    if "exact duplicate across classes" not in names:
        raise AssertionError("One photo is filed under two classes: at most one label is right, and no rule can say "
                             "which. Skipping the copy keeps whichever came first.")
    if "empty class folder" not in names:
        raise AssertionError("A class with no images cannot be learned: someone must add photos or decide to drop it.")
    if converted := names & set(FIXED_BY_READING):
        raise AssertionError(f"{sorted(converted)[0]} is fixed without loss when the file is read (converted to RGB): "
                             "no one needs to look at it.")
    print("Correct: the label conflict and the empty class need a person; colour modes are converted by rule "
          "(the truncated file, the text file and the thumbnail are judgement calls).")
    return True
