"""Lesson 04's companion: galleries, per-sample draws, MixUp/CutMix checks, the preview widget,
loader throughput per preset, and the ablation (one fine-tune per preset at equal budget)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torchvision.transforms import v2
from tqdm.auto import tqdm

from helpers import evaluate, models, train, widgets
from helpers.course.checks import answer_of, checker
from helpers.data.augment import PRESETS, BatchTransform, BoxSampler, _randaugment, build, check_preset, strengths
from helpers.data.images import LabeledImages
from helpers.data.loaders import make_loader
from helpers.data.splits import Splits
from helpers.data.transforms import ImageSpec
from helpers.plots import as_displayable
from helpers.profiles import Settings


def gallery_transforms(spec: ImageSpec, magnitude: float = 0.5) -> dict[str, v2.Transform]:
    """One transform per augmentation idea, for a picture gallery: uint8 [3, H, W] in, uint8 [3, *spec.size] out."""
    s = strengths(magnitude)
    resize = v2.Resize(spec.size)
    jitter = s.color_jitter
    return {
        "resized crop": v2.RandomResizedCrop(spec.size, scale=s.crop_scale, ratio=s.crop_ratio),
        "horizontal flip": v2.Compose([resize, v2.RandomHorizontalFlip(p=1.0)]),
        "color jitter": v2.Compose([resize, v2.ColorJitter(jitter, jitter, jitter, hue=jitter / 4)]),
        "RandAugment": v2.Compose([resize, _randaugment(s)]),
        "TrivialAugment": v2.Compose([resize, v2.TrivialAugmentWide()]),
        "AugMix": v2.Compose([resize, v2.AugMix(severity=s.augmix_severity)]),
        "random erasing": v2.Compose([resize, v2.RandomErasing(p=1.0)]),
    }


@checker
def check_cutmix_box(sampler: BoxSampler) -> bool:
    """Exercise checker for a CutMix box sampler like `cutmix_box`: True, or AssertionError saying what is wrong.

    Boxes must lie inside the image at every lam from 0 (the whole image) to 1 (an empty box), keep
    the image's aspect ratio with sides sqrt(1 - lam) * h and * w (to within one pixel of rounding),
    be placed at random, and draw that position from the generator passed in (nothing else).
    """
    outside = torch.get_rng_state()  # a sampler that draws from the global state must not change the learner's
    try:
        check_boxes(sampler)
    finally:
        torch.set_rng_state(outside)
    print("Correct: the boxes lie inside the image, cover about (1 - lam) of it, and follow the generator.")
    return True


def check_boxes(sampler: BoxSampler) -> None:
    """The checks of `check_cutmix_box`; AssertionError(hint) on the first that fails."""
    for h, w, lam in ((32, 32, 0.5), (24, 40, 0.75), (64, 48, 0.1), (16, 16, 0.0), (20, 12, 0.0), (16, 16, 1.0)):
        generator = torch.Generator().manual_seed(h * w)
        for _ in range(8):  # several draws, so a box that sometimes sticks out is seen
            box = answer_of(f"For a {h}x{w} image at lam={lam} the sampler", sampler, h, w, lam, generator)
            x1, y1, x2, y2 = (int(v) for v in box)
            if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
                raise AssertionError(
                    f"For a {h}x{w} image at lam={lam} the box {(x1, y1, x2, y2)} is not (x1, y1, x2, y2) inside it: "
                    "a side of length s can start anywhere from 0 to (size - s), both ends included."
                )
            cut = math.sqrt(1 - lam)
            if abs((x2 - x1) * (y2 - y1) - (1 - lam) * h * w) > h + w:
                raise AssertionError(f"For a {h}x{w} image and lam={lam} the box covers {(x2 - x1) * (y2 - y1)} "
                                     "pixels: its area should be (1 - lam) of the image's.")
            if abs((x2 - x1) - w * cut) > 1 or abs((y2 - y1) - h * cut) > 1:
                raise AssertionError(f"For a {h}x{w} image the box is {x2 - x1} wide and {y2 - y1} high: keep the "
                                     "image's aspect ratio (width from w, height from h, in the order x1, y1, x2, y2).")
    draws = [answer_of("The sampler", sampler, 32, 32, 0.75, torch.Generator().manual_seed(seed))[:2]
             for seed in range(20)]
    if len(set(draws)) == 1:
        raise AssertionError("The box is always in the same place; draw its position at random with the generator.")
    before = torch.get_rng_state()
    sequences = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        sequences.append([tuple(sampler(32, 32, 0.75, generator)) for _ in range(5)])
    if sequences[0] != sequences[1] or not torch.equal(torch.get_rng_state(), before):
        raise AssertionError("The box does not follow the generator passed in: draw the position with "
                             "torch.randint(..., generator=generator), not with the global random state.")


@checker
def check_labels_valid(batch_transform: BatchTransform, num_classes: int = 10, batch_size: int = 8,
                       trials: int = 20) -> bool:
    """Exercise checker for a MixUp (or CutMix) batch transform: True, or AssertionError saying what is wrong.

    It feeds float batches where every image is one flat shade per class, so after any
    mixing the share of each class's shade in an image must equal that class's target
    weight. Targets may be class ids [B] or probabilities [B, C] summing to 1. The images
    must really be mixed (a transform that returns every image whole is no MixUp), and the
    mixing weight must be drawn anew for each batch.
    """
    outside = torch.get_rng_state()  # the learner's own draws (of lambda) leave the notebook's random state alone
    try:
        mixed_shares = [mixed_share(batch_transform, num_classes, batch_size, seed) for seed in range(trials)]
    finally:
        torch.set_rng_state(outside)
    if max(mixed_shares) < 1e-3:
        raise AssertionError("Nothing is mixed: every image is still one whole image of one class. Pair each image "
                             "with another one (not itself) and blend the two with a weight from Beta(alpha, alpha).")
    if max(mixed_shares) - min(mixed_shares) < 1e-6:
        raise AssertionError("Every batch is mixed with the same weight: draw lambda anew from Beta(alpha, alpha) "
                             "on each call.")
    print("Correct: every target row is a probability vector that matches what is in its image, and images are mixed.")
    return True


def mixed_share(batch_transform: BatchTransform, num_classes: int, batch_size: int, seed: int) -> float:
    """One batch of flat shades through `batch_transform`, checked; returns the largest share any image takes from
    a second class (0 when nothing is mixed). AssertionError(hint) when targets and images disagree."""
    shades = torch.linspace(0.1, 0.9, num_classes)
    labels = torch.randint(num_classes, (batch_size,), generator=torch.Generator().manual_seed(seed))
    images = shades[labels].view(-1, 1, 1, 1).expand(-1, 3, 12, 16).clone()
    mixed, targets = answer_of("Your batch transform", batch_transform, images.clone(), labels.clone())
    if not (isinstance(mixed, torch.Tensor) and mixed.is_floating_point() and mixed.shape == images.shape):
        raise AssertionError(f"Images must stay a float tensor of shape {tuple(images.shape)} (the batch's own shape).")
    targets = torch.as_tensor(targets)
    if targets.ndim == 1:
        targets = torch.nn.functional.one_hot(targets.long(), num_classes).float()
    if targets.shape != (batch_size, num_classes):
        raise AssertionError(
            f"Targets must be [B] class ids or [B, C] = {(batch_size, num_classes)}, got {tuple(targets.shape)}."
        )
    if (targets < 0).any() or not torch.allclose(targets.sum(1), torch.ones(batch_size), atol=1e-4):
        raise AssertionError("Each target row must be non-negative probabilities that sum to 1.")
    if not torch.allclose(mixed.mean((1, 2, 3)), targets @ shades, atol=1e-3):
        raise AssertionError(
            "The targets do not match the images: mix the labels with the same pairs and weights as the images."
        )
    return float(targets.topk(2, dim=1).values[:, 1].max())


def apply_per_sample(transform: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """Apply `transform` to each image of `batch` [B, 3, H, W] on its own, so each gets its own random draw."""
    return torch.stack([transform(image) for image in batch])


def same_draw_demo(transform: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                   n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` copies of `image` transformed as one batch tensor (one draw) and one by one (n draws)."""
    batch = image.unsqueeze(0).repeat(n, 1, 1, 1)
    return transform(batch), apply_per_sample(transform, batch)


def count_distinct(batch: torch.Tensor) -> int:
    """How many different images `batch` [B, ...] holds."""
    return len(torch.unique(batch.flatten(1), dim=0))


def plot_augmentations(images: Sequence[torch.Tensor], transforms_by_name: Mapping[str, Callable], n: int = 6,
                       spec: ImageSpec | None = None) -> Figure:
    """A grid: the first `n` images on top, then one row per named transform applied to each.

    Images are [3, H, W], uint8 or float in [0, 1]; pass `spec` to show normalised
    outputs (those of a preset's train transform) in their true colours.
    """
    shown = list(images)[:n]
    rows = {"original": shown}
    rows.update({name: [transform(image) for image in shown] for name, transform in transforms_by_name.items()})
    return _image_rows(rows, spec)


def plot_batch(images: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], spec: ImageSpec | None = None,
               n: int = 8) -> Figure:
    """The first `n` images of a batch, each titled with its target: a class, or the top two of a soft target."""
    titles = [target_title(target, class_names) for target in targets[:n]]
    return _image_rows({"": list(images[:n])}, spec, [titles])


def target_title(target: torch.Tensor, class_names: Sequence[str]) -> str:
    """A class id, or a one-hot target, as its name; a mixed target as its two heaviest classes with their weights."""
    if target.ndim == 0:
        return str(class_names[int(target)])
    weights, classes = target.topk(min(2, len(target)))
    if weights[0] >= 0.995:
        return str(class_names[int(classes[0])])
    return " ".join(f"{class_names[int(c)]}:{float(w):.2f}" for w, c in zip(weights, classes) if w >= 0.005)


def _image_rows(rows: Mapping[str, Sequence[torch.Tensor]], spec: ImageSpec | None,
                titles: Sequence[Sequence[str]] | None = None) -> Figure:
    """A grid with one row per entry of `rows` (its key as the row label), optionally a title per image."""
    columns = max(len(row) for row in rows.values())
    fig = Figure(figsize=(1.0 * columns + 0.8, 1.05 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (row_axes, (name, row)) in enumerate(zip(axes, rows.items())):
        row_axes[0].set_ylabel(name)
        for c, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.set_axis_off()
                continue
            ax.imshow(as_displayable(row[c], spec), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[r][c], fontsize=7)
    return fig


def preview_figure(images: Sequence[torch.Tensor], labels: Sequence[int], spec: ImageSpec,
                   class_names: Sequence[str], preset: str = "strong", magnitude: float = 0.5,
                   draws: int = 3) -> Figure:
    """`draws` rows of the same uint8 `images` through the preset's train transform (and its batch mixing).

    Every row is a fresh draw; each image is titled with its target, so mixed labels show their weights.
    """
    aug = build(preset, spec, magnitude, num_classes=len(class_names))
    rows, titles = {}, []
    for draw in range(draws):
        batch = apply_per_sample(aug.train_transform, torch.stack(list(images)))
        targets = torch.as_tensor(list(labels))
        if aug.batch_transform is not None:
            batch, targets = aug.batch_transform(batch, targets)
        rows[f"draw {draw + 1}"] = list(batch)
        titles.append([target_title(target, class_names) for target in targets])
    fig = _image_rows(rows, spec, titles)
    fig.suptitle(f"{preset}, magnitude {aug.magnitude:g}")
    return fig


def preview(images: Sequence[torch.Tensor], labels: Sequence[int], spec: ImageSpec, class_names: Sequence[str],
            preset: str = "strong", magnitude: float = 0.5, draws: int = 3):
    """A widget: pick a preset and a magnitude, see `preview_figure` (one static view when headless)."""
    import ipywidgets

    def draw(preset: str, magnitude: float) -> Figure:
        return preview_figure(images, labels, spec, class_names, preset, magnitude, draws)

    return widgets.explorer(
        draw,
        preset=ipywidgets.Dropdown(options=PRESETS, value=preset, description="preset"),
        magnitude=ipywidgets.FloatSlider(value=magnitude, min=0.0, max=1.0, step=0.1, description="magnitude"),
    )


def loader_throughput(dataset: LabeledImages, batch_size: int, *, num_workers: int = 0,
                      batch_transform: BatchTransform | None = None, max_images: int | None = None) -> float:
    """Images per second a shuffled training DataLoader delivers from `dataset`, batch transform included.

    The clock starts once the first batch is out, so worker start-up is not counted;
    `max_images` stops early on a large dataset.
    """
    if len(dataset) <= batch_size:
        raise ValueError(
            f"Measuring throughput needs more than one batch: the dataset has {len(dataset)} images for "
            f"batch_size={batch_size}; use a larger dataset or a smaller batch_size."
        )
    loader = make_loader(dataset, batch_size, shuffle_generator=torch.Generator().manual_seed(0),
                         num_workers=num_workers)
    started, count = None, 0
    for images, labels in loader:
        if batch_transform is not None:
            batch_transform(images, labels)
        if started is None:
            started = time.perf_counter()
            continue
        count += len(images)
        if max_images is not None and count >= max_images:
            break
    return count / (time.perf_counter() - started)


def throughput_by_preset(dataset: LabeledImages, spec: ImageSpec, presets: Sequence[str] = PRESETS,
                         magnitude: float = 0.5, *, batch_size: int = 64, num_workers: int = 0,
                         max_images: int | None = None) -> dict[str, float]:
    """`loader_throughput` (images/s) of each preset's train transform and batch mixing on `dataset`."""
    augmentations = [build(p, spec, magnitude, num_classes=len(dataset.classes)) for p in presets]
    return {
        aug.name: loader_throughput(dataset.with_transform(aug.train_transform), batch_size,
                                    num_workers=num_workers, batch_transform=aug.batch_transform,
                                    max_images=max_images)
        for aug in tqdm(augmentations, desc="throughput")
    }


ABLATION_PRESETS = ("none", "basic", "randaugment", "strong")


@dataclass
class AblationResult:
    """One fine-tune per preset: each run's History and its test accuracy."""

    magnitude: float
    histories: dict[str, train.History]
    test_accuracy: dict[str, float]

    @property
    def best(self) -> str:
        """The preset with the highest test accuracy."""
        return max(self.test_accuracy, key=self.test_accuracy.get)

    def table(self) -> str:
        """A markdown table: best and final validation accuracy, test accuracy and gain over `none` per preset."""
        base = self.test_accuracy.get("none")
        lines = ["| preset | best val acc | final val acc | test acc | vs none | train time |",
                 "|---|---|---|---|---|---|"]
        for preset, history in self.histories.items():
            test = self.test_accuracy[preset]
            gain = "-" if base is None or preset == "none" else f"{100 * (test - base):+.1f} pt"
            seconds = sum(history.column("seconds"))
            lines.append(f"| {preset} | {history.best['val_accuracy']:.1%} | {history.rows[-1]['val_accuracy']:.1%}"
                         f" | {test:.1%} | {gain} | {seconds:.0f} s |")
        return "\n".join(lines)

    def plot(self) -> Figure:
        """Validation accuracy and validation loss per epoch, one line per preset."""
        fig = Figure(figsize=(8, 2.8), layout="constrained")
        ax_acc, ax_loss = fig.subplots(1, 2)
        for preset, history in self.histories.items():
            epochs = history.column("epoch")
            ax_acc.plot(epochs, history.column("val_accuracy"), marker="o", label=preset)
            ax_loss.plot(epochs, history.column("val_loss"), marker="o", label=preset)
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="validation loss")
        ax_acc.legend()
        fig.suptitle(f"augmentation ablation, magnitude {self.magnitude:g}")
        return fig


def run_ablation(splits: Splits, settings: Settings, presets: Sequence[str] = ABLATION_PRESETS,
                 magnitude: float = 0.5, *, random_init: bool = False, progress: bool = True) -> AblationResult:
    """Fine-tune `settings.model_name` once per preset on `splits`: same seed, epochs and steps for each.

    Every run starts from a freshly loaded model (new head seeded by `settings.seed`,
    or all weights random with `random_init=True`) and is scored on the test split.
    """
    for preset in presets:
        check_preset(preset)
    strengths(magnitude)
    histories, test_accuracy = {}, {}
    bar = tqdm(presets, desc="ablation", disable=not progress)
    for preset in bar:
        bar.set_postfix_str(preset)
        train.seed_everything(settings.seed)
        model, processor = models.load_model(settings.model_name, splits.classes, random_init=random_init)
        aug = build(preset, ImageSpec.from_processor(processor), magnitude, num_classes=len(splits.classes))
        run = splits.with_transforms(aug.train_transform, aug.eval_transform)
        histories[preset] = train.fit(model, run.train, run.val, settings, batch_transform=aug.batch_transform,
                                      progress=False)
        predictions = evaluate.predict(model, run.test, batch_size=settings.batch_size, progress=False)
        test_accuracy[preset] = evaluate.accuracy(predictions.preds, predictions.labels)
    return AblationResult(magnitude, histories, test_accuracy)
