"""Lesson 07's companion: the default photo set (surfaces photographed, shipped inside scikit-image), files written the
way phones and tools write them, the leak of a random split, the strategy rule, figures and exercise checkers."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression

from helpers.course.checks import checker
from helpers.data.photos import ORIENTATION_TAG
from helpers.data.splits import pairs_across_splits
from helpers.data.transforms import eval_transform
from helpers.evaluate.metrics import paired_comparison
from helpers.freezing import cache_features
from helpers.plots import as_displayable


@dataclass(frozen=True)
class Surface:
    """One class of the default set: a photograph bundled in scikit-image, what it shows, and its licence."""

    loader: str  # the skimage.data function
    shows: str
    licence: str
    centre: float = 1.0  # share of the photo's middle that is used (the retina photo has black corners)


SURFACES = {
    "brick": Surface("brick", "a brick wall", "CC0 (cc0textures.com, Bricks25)"),
    "grass": Surface("grass", "a lawn", "CC0 (cc0textures.com)"),
    "gravel": Surface("gravel", "gravel", "CC0 (cc0textures.com, Gravel04)"),
    "galaxies": Surface("hubble_deep_field", "the Hubble eXtreme Deep Field", "public domain (NASA)"),
    "tissue": Surface("immunohistochemistry", "stained colon tissue under a microscope",
                      "no known copyright restrictions (CMMI)"),
    "retina": Surface("retina", "a human retina photographed through the pupil", "CC0 (Mikael Häggström)", 0.5),
}


REGIONS = 4  # each photograph is cut into REGIONS x REGIONS disjoint regions: the groups


GROUP_PATTERN = r"^(r\d+)_"  # the region in a file name of the default set: r5_3.png is in region 5


DEFAULT_ROOT = Path.home() / ".cache" / "vit-course" / "photos"


PHONE_FILES = {  # what write_phone_style_files adds, and where
    "EXIF orientation 6": "brick/r5_phone.jpg",
    "16-bit PNG": "gravel/r5_scan16.png",
    "transparent corners": "tissue/r5_cutout.png",
    "resized copy": "grass/copy_small.jpg",
}


def surface_photo(name: str) -> np.ndarray:
    """The photograph of class `name` as uint8 H x W x 3 (grey ones repeated over three channels)."""
    from skimage import data as skimage_data

    surface = SURFACES[name]
    image = np.asarray(getattr(skimage_data, surface.loader)())
    image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    height, width = image.shape[:2]
    margin_y, margin_x = int(height * (1 - surface.centre) / 2), int(width * (1 - surface.centre) / 2)
    return image[margin_y:height - margin_y, margin_x:width - margin_x]


def write_surface_set(root: str | os.PathLike, crops_per_region: int = 5, coverage: float = 0.8,
                      seed: int = 0) -> Path:
    """Write the default set: per class, `crops_per_region` crops from each of the 16 regions of its photograph.

    A crop covers `coverage` of its region's side at a random place, so crops of one region overlap
    heavily: near-duplicates by construction. Files are `root/<class>/r<region>_<k>.png`; the region in
    the name is the group that a fair split keeps together. Returns `root`.
    """
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: write the photo set into a new or empty folder.")
    rng = np.random.default_rng(seed)
    for name in SURFACES:
        photo = surface_photo(name)
        height, width = photo.shape[0] // REGIONS, photo.shape[1] // REGIONS
        side = int(min(height, width) * coverage)
        folder = root / name
        folder.mkdir(parents=True)
        for region in range(REGIONS * REGIONS):
            top, left = (region // REGIONS) * height, (region % REGIONS) * width
            for k in range(crops_per_region):
                y, x = top + rng.integers(0, height - side + 1), left + rng.integers(0, width - side + 1)
                Image.fromarray(photo[y:y + side, x:x + side]).save(folder / f"r{region}_{k}.png")
    return root


def write_phone_style_files(root: str | os.PathLike) -> dict[str, Path]:
    """Add four files to the default set the way phones and tools write them; returns {what: path}.

    A portrait JPEG stored sideways with EXIF orientation 6, a 16-bit greyscale PNG, a PNG whose
    corners are transparent, and a half-size JPEG copy of another photo (a near-duplicate under a new
    name). Each is cut from region 5, and named so it joins that region's group, except the copy: only
    its perceptual hash can tell where it belongs.
    """
    root = Path(root).expanduser()
    written = {what: root / relative for what, relative in PHONE_FILES.items()}
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # "turn 90 degrees clockwise to view": the pixels are stored turned the other way
    upright = Image.open(root / "brick" / "r5_0.png").convert("RGB")
    upright.transpose(Image.Transpose.ROTATE_90).save(written["EXIF orientation 6"], exif=exif.tobytes(), quality=95)
    grey = np.asarray(Image.open(root / "gravel" / "r5_0.png").convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(written["16-bit PNG"])
    cutout = Image.open(root / "tissue" / "r5_0.png").convert("RGBA")
    alpha = Image.new("L", cutout.size, 0)
    alpha.paste(255, (cutout.width // 8, cutout.height // 8, cutout.width * 7 // 8, cutout.height * 7 // 8))
    cutout.putalpha(alpha)
    cutout.save(written["transparent corners"])
    original = Image.open(root / "grass" / "r5_1.png")
    original.resize((original.width // 2, original.height // 2)).save(written["resized copy"], quality=90)
    return written


def default_photos(crops_per_region: int = 5) -> tuple[Path, dict[str, Path]]:
    """The default set with its phone-style files, written once into ~/.cache/vit-course/photos; (root, files).

    Written into a temporary folder and renamed, so an interrupted run leaves no half-written set.
    """
    root = DEFAULT_ROOT / f"surfaces-{REGIONS}x{REGIONS}-{crops_per_region}"
    if not root.is_dir():
        staging = root.with_name(f".{root.name}.{os.getpid()}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        write_surface_set(staging, crops_per_region)
        write_phone_style_files(staging)
        try:
            staging.rename(root)
        except OSError:  # another run wrote it meanwhile
            shutil.rmtree(staging)
    return root, {what: root / relative for what, relative in PHONE_FILES.items()}


def new_phone_photo(folder: str | os.PathLike, name: str = "brick", seed: int = 1) -> Path:
    """A crop of class `name`'s photograph that straddles its regions, saved as a phone would (JPEG, EXIF
    orientation 6) in `folder`: a file none of the splits holds as such."""
    photo = surface_photo(name)
    rng = np.random.default_rng(seed)
    side = min(photo.shape[:2]) // REGIONS
    y, x = rng.integers(side // 2, photo.shape[0] - side - side // 2), rng.integers(side // 2, photo.shape[1] - 2 * side)
    path = Path(folder).expanduser() / f"new_{name}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    Image.fromarray(photo[y:y + side, x:x + side]).transpose(Image.Transpose.ROTATE_90).save(
        path, exif=exif.tobytes(), quality=92)
    return path


def naive_read(path: Path) -> torch.Tensor:
    """How a file reads without the photo I/O: `Image.open(path).convert("RGB")` (lesson 03's reader before 07)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def plot_reads(paths: dict[str, Path], read) -> Figure:
    """Each file read naively (top) and by `read` (bottom), titled by what it is."""
    fig = Figure(figsize=(2.2 * len(paths), 4.6), layout="constrained")
    axes = fig.subplots(2, len(paths), squeeze=False)
    for column, (what, path) in enumerate(paths.items()):
        for row, (reader, how) in enumerate(((naive_read, "convert('RGB')"), (read, "read_photo"))):
            image = reader(path)
            axes[row, column].imshow(as_displayable(image))
            axes[row, column].set_title(f"{what}\n{how}" if row == 0 else how, fontsize=8)
            axes[row, column].axis("off")
    return fig


def plot_pairs(dataset, pairs, k: int = 6) -> Figure:
    """The first `k` near-duplicate pairs side by side, with their hash distance."""
    pairs = list(pairs)[:k]
    if not pairs:
        raise ValueError("No near-duplicate pairs to show.")
    fig = Figure(figsize=(1.6 * len(pairs), 3.6), layout="constrained")
    axes = fig.subplots(2, len(pairs), squeeze=False)
    for column, pair in enumerate(pairs):
        for row, index in enumerate((pair.first, pair.second)):
            axes[row, column].imshow(as_displayable(dataset.image(index)))
            axes[row, column].axis("off")
        axes[0, column].set_title(f"{pair.distance} bits apart", fontsize=8)
    return fig


def photo_features(model, dataset, spec) -> torch.Tensor:
    """The frozen backbone's CLS features of every photo of `dataset` (raw images), in order."""
    return cache_features(model, dataset.with_transform(eval_transform(spec)), progress=False).features


def neighbour_accuracy(features: torch.Tensor, labels, parts) -> float:
    """Test accuracy of the plainest memoriser: each test photo takes the label of the training photo whose
    features are closest in cosine similarity. `parts` are the (train, val, test) indices of a split."""
    train, _, test = (torch.as_tensor(part, dtype=torch.long) for part in parts)
    labels = torch.as_tensor(labels)
    unit = F.normalize(features, dim=1)
    nearest = (unit[test] @ unit[train].T).argmax(dim=1)
    return float((labels[train][nearest] == labels[test]).float().mean())


def leak_rows(features, labels, pairs, split_rules: dict, seeds=range(10)) -> dict[str, dict]:
    """Per split rule (name -> function of a seed returning train, val, test indices), over `seeds`: the mean
    number of near-duplicate pairs across splits, and the memoriser's test accuracy (mean and sd)."""
    rows = {}
    for name, split in split_rules.items():
        parts = [split(seed) for seed in seeds]
        accuracies = [neighbour_accuracy(features, labels, part) for part in parts]
        rows[name] = {"pairs_across": float(np.mean([pairs_across_splits(pairs, part) for part in parts])),
                      "accuracy": float(np.mean(accuracies)), "spread": float(np.std(accuracies, ddof=1))}
    return rows


def leak_table(rows: dict[str, dict]) -> str:
    """A Markdown table of `leak_rows`."""
    lines = ["| split | near-duplicate pairs across splits | nearest-neighbour test accuracy |", "|---|---:|---:|"]
    lines += [f"| {name} | {row['pairs_across']:.1f} | {row['accuracy']:.1%} ± {row['spread']:.1%} |"
              for name, row in rows.items()]
    return "\n".join(lines)


def pixel_baseline(train_set, val_set) -> float:
    """Validation accuracy of logistic regression on raw resized pixels (lesson 02's control), for the rule."""
    def matrix(dataset):
        return np.stack([dataset[i][0].numpy().reshape(-1) for i in range(len(dataset))])

    classifier = LogisticRegression(max_iter=500).fit(matrix(train_set), train_set.labels)
    return float(classifier.score(matrix(val_set), val_set.labels))


def choose_candidates(probe_accuracy: float, pixel_accuracy: float) -> tuple[list[str], str]:
    """Step 1 of the rule (lesson 02): frozen features that do not beat raw pixels cap the probe and LoRA, so only
    full fine-tuning is worth training; otherwise LoRA and full fine-tuning both are. Returns (strategies, why)."""
    if probe_accuracy > pixel_accuracy:
        return ["lora", "full"], (f"frozen features beat raw pixels ({probe_accuracy:.1%} vs {pixel_accuracy:.1%}): "
                                  "the backbone fits, so LoRA may be enough; full fine-tuning is trained to check")
    return ["full"], (f"raw pixels do as well as frozen features or better ({pixel_accuracy:.1%} vs "
                      f"{probe_accuracy:.1%}): the backbone must change, so every weight trains")


def pick_strategy(results: dict, alpha: float = 0.05) -> tuple[str, str]:
    """Step 2 of the rule: ship LoRA (a small adapter to share) unless full fine-tuning beats it on the validation
    photos beyond chance (paired McNemar test, p < alpha). `results`: {strategy: finetune.Evaluation}."""
    if "lora" not in results or "full" not in results:
        name = next(name for name in ("full", "lora", "probe") if name in results)
        return name, "the only fine-tune trained"
    comparison = paired_comparison(results["lora"].val.correct, results["full"].val.correct)
    if comparison.difference > 0 and comparison.p_value < alpha:
        return "full", f"full fine-tuning beats LoRA on validation beyond chance (p = {comparison.p_value:.3g})"
    return "lora", f"full fine-tuning does not beat LoRA on validation beyond chance (p = {comparison.p_value:.3g})"


@checker
def check_upright(your_image, path) -> None:
    """Exercise: read the sideways phone photo upright, as a uint8 tensor [3, H, W]."""
    assert isinstance(your_image, torch.Tensor) and your_image.dtype == torch.uint8 and your_image.ndim == 3, \
        "give a uint8 tensor [3, H, W], e.g. torch.from_numpy(np.asarray(image)).permute(2, 0, 1)"
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert tuple(your_image.shape[1:]) == expected.shape[:2], \
        "height and width are swapped: the stored pixels are sideways; apply the EXIF orientation (ImageOps)"
    assert np.abs(your_image.permute(1, 2, 0).numpy().astype(int) - expected).mean() < 2, \
        "the size is right but the pixels are not upright: turn the image the way its orientation tag says"
    print("Correct: the photo is upright, the way its EXIF orientation says it was taken.")


@checker
def check_group_split(your_parts, pairs, groups) -> None:
    """Exercise: a (train, val, test) split of indices with no near-duplicate pair and no group across splits."""
    assert isinstance(your_parts, (tuple, list)) and len(your_parts) == 3, "give three lists: train, val, test"
    flat = [i for part in your_parts for i in part]
    assert len(flat) == len(set(flat)) == len(groups), "every photo must be in exactly one split"
    assert all(len(part) for part in your_parts), "each split needs photos"
    where = {i: k for k, part in enumerate(your_parts) for i in part}
    by_group: dict = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, set()).add(where[index])
    assert all(len(splits) == 1 for splits in by_group.values()), \
        "some group has photos in two splits: split the groups, not the photos (data.group_split)"
    assert pairs_across_splits(pairs, your_parts) == 0, "a near-duplicate pair straddles two splits: merge pairs into groups"
    print("Correct: no group and no near-duplicate pair straddles two splits.")


LIMITS = ("Every photo of a class is a crop of one photograph: one scene, one camera, one light. The accuracy says "
          "how well the model tells these six photographs apart, not how it does on new photographs, other cameras "
          "or other lighting.")


def surface_table() -> str:
    """The default set as a Markdown table: class, what the photograph shows, its size and licence."""
    lines = ["| class | photograph (scikit-image) | pixels | licence |", "|---|---|---:|---|"]
    for name, surface in SURFACES.items():
        height, width = surface_photo(name).shape[:2]
        lines.append(f"| {name} | {surface.shows} (`skimage.data.{surface.loader}`) | {width} x {height} | "
                     f"{surface.licence} |")
    return "\n".join(lines)


def describe_set() -> str:
    """One paragraph for the model card: what the default set is and where it comes from."""
    sources = "; ".join(f"{name}: {surface.shows}, {surface.licence}" for name, surface in SURFACES.items())
    return (f"Crops of six photographs bundled with scikit-image, one per class, each cut into {REGIONS} x {REGIONS} "
            f"disjoint regions with overlapping crops per region ({sources}).")
