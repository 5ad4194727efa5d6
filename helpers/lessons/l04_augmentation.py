"""Lesson 04's companion: galleries, per-sample draws, MixUp/CutMix checks, the preview widget,
loader throughput per preset, and the ablation (one fine-tune per preset at equal budget)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.transforms import v2

from helpers import evaluate, models, train, widgets
from helpers.course.checks import answer_of, checker
from helpers.data.augment import (
    PRESETS,
    BatchTransform,
    BoxSampler,
    _randaugment,
    build,
    check_preset,
    mirror_safe,
    strengths,
)
from helpers.data.images import LabeledImages
from helpers.data.loaders import make_loader
from helpers.data.splits import Splits
from helpers.data.transforms import ImageSpec
from helpers.plots import as_displayable
from helpers.profiles import Settings
from helpers.progress import progress_bar
from helpers.timing import median_of_repeats


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
                         max_images: int | None = None, flip: bool = True, repeats: int = 3) -> dict[str, float]:
    """`loader_throughput` (images/s) of each preset's train transform and batch mixing on `dataset`: the median
    of `repeats` measurements."""
    augmentations = [build(p, spec, magnitude, num_classes=len(dataset.classes), flip=flip) for p in presets]
    return {
        aug.name: median_of_repeats(lambda: loader_throughput(
            dataset.with_transform(aug.train_transform), batch_size, num_workers=num_workers,
            batch_transform=aug.batch_transform, max_images=max_images), repeats)
        for aug in progress_bar(augmentations, desc="throughput")
    }


ABLATION_PRESETS = ("none", "basic", "randaugment", "strong")


ABLATION_SEEDS = 3


LONG_ARM_PRESETS = ("none", "strong")  # trained again with a longer budget


@dataclass
class AblationRun:
    """One fine-tune of the ablation: its preset, budget and seed, its History and its test accuracy."""

    preset: str
    epochs: int
    seed: int
    history: train.History
    test_accuracy: float


@dataclass
class AblationResult:
    """Every run of the ablation, and what they say per arm (a preset at one budget) over the seeds."""

    magnitude: float
    flip: bool
    test_images: int
    runs: list[AblationRun]

    def arms(self) -> list[tuple[str, int]]:
        """(preset, epochs) of each arm, in the order they ran."""
        return list(dict.fromkeys((run.preset, run.epochs) for run in self.runs))

    def accuracies(self, preset: str, epochs: int) -> list[float]:
        """The test accuracy of each seed of one arm."""
        return [run.test_accuracy for run in self.runs if (run.preset, run.epochs) == (preset, epochs)]

    def mean_sd(self, preset: str, epochs: int) -> tuple[float, float]:
        """Mean and standard deviation (n - 1) over the seeds of one arm's test accuracy."""
        values = np.array(self.accuracies(preset, epochs))
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    def threshold(self, preset: str, epochs: int, baseline: tuple[str, int]) -> float:
        """The noise rule (`evaluate.noise_threshold`) for comparing an arm with `baseline`, from both arms'
        mean accuracy, the test-set size and the larger of their seed spreads."""
        (mean, sd), (base_mean, base_sd) = self.mean_sd(preset, epochs), self.mean_sd(*baseline)
        seeds = min(len(self.accuracies(preset, epochs)), len(self.accuracies(*baseline)))
        return evaluate.noise_threshold((mean + base_mean) / 2, self.test_images, max(sd, base_sd), seeds)

    def verdict(self, preset: str, epochs: int, baseline: tuple[str, int]) -> str:
        """'better', 'worse' or 'within noise': the arm against `baseline` under the noise rule."""
        gap = self.mean_sd(preset, epochs)[0] - self.mean_sd(*baseline)[0]
        if abs(gap) <= self.threshold(preset, epochs, baseline):
            return "within noise"
        return "better" if gap > 0 else "worse"

    def table(self) -> str:
        """A markdown table per arm: test accuracy of each seed, mean ± sd, the gap to `none` at the same budget
        with the noise rule's verdict, and the median seconds per epoch."""
        lines = ["| preset | epochs | test accuracy per seed | mean ± sd | vs none (same epochs) | s / epoch (median) |",
                 "|---|---:|---|---|---|---:|"]
        for preset, epochs in self.arms():
            mean, sd = self.mean_sd(preset, epochs)
            seeds = ", ".join(f"{value:.1%}" for value in self.accuracies(preset, epochs))
            gap = "-"
            if preset != "none" and ("none", epochs) in self.arms():
                difference = mean - self.mean_sd("none", epochs)[0]
                gap = (f"{100 * difference:+.1f} pt: {self.verdict(preset, epochs, ('none', epochs))} "
                       f"(rule: ±{100 * self.threshold(preset, epochs, ('none', epochs)):.1f})")
            seconds = float(np.median([s for run in self.runs if (run.preset, run.epochs) == (preset, epochs)
                                       for s in run.history.column("seconds")]))
            lines.append(f"| {preset} | {epochs} | {seeds} | {mean:.1%} ± {100 * sd:.1f} | {gap} | {seconds:.1f} |")
        return "\n".join(lines)

    def plot(self) -> Figure:
        """Test accuracy per arm (mean ± sd, each seed a dot), and the mean validation curve of each preset."""
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        ax_arms, ax_curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
        for position, (preset, epochs) in enumerate(self.arms()):
            mean, sd = self.mean_sd(preset, epochs)
            color = f"C{list(dict.fromkeys(p for p, _ in self.arms())).index(preset)}"
            ax_arms.errorbar(position, mean, yerr=sd, fmt="o", color=color, capsize=4)
            values = self.accuracies(preset, epochs)
            ax_arms.scatter([position] * len(values), values, color=color, alpha=0.4, s=12)
        ax_arms.set_xticks(range(len(self.arms())), [f"{p}\n{e} ep" for p, e in self.arms()], fontsize=7)
        ax_arms.set(ylabel="test accuracy", title="test accuracy: mean ± sd, dots = seeds")
        for preset, epochs in self.arms():
            curves = np.array([run.history.column("val_accuracy") for run in self.runs
                               if (run.preset, run.epochs) == (preset, epochs)])
            color = f"C{list(dict.fromkeys(p for p, _ in self.arms())).index(preset)}"
            ax_curves.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), color=color,
                           linestyle="-" if epochs == min(e for _, e in self.arms()) else "--",
                           label=f"{preset}, {epochs} ep")
        ax_curves.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy (mean over seeds)")
        ax_curves.legend(fontsize=7)
        fig.suptitle(f"augmentation ablation, magnitude {self.magnitude:g}, flips {'on' if self.flip else 'off'}")
        return fig


def run_ablation(splits: Splits, settings: Settings, presets: Sequence[str] = ABLATION_PRESETS,
                 magnitude: float = 0.5, *, seeds: int = ABLATION_SEEDS, long_presets: Sequence[str] = LONG_ARM_PRESETS,
                 long_factor: int = 2, flip: bool | None = None, random_init: bool = False,
                 progress: bool = True) -> AblationResult:
    """Fine-tune `settings.model_name` once per preset and seed at the settings' epochs, and the `long_presets`
    again at `long_factor` times the epochs; score each run on the test split.

    Seeds are `settings.seed`, `settings.seed + 1`, ...: each seed fixes the new head, the shuffling and the
    augmentation draws, the same for every preset. `flip` defaults to `mirror_safe(settings.dataset_name)`:
    no horizontal flip where a mirror changes the label. `random_init=True` starts every run from random weights.
    """
    for preset in (*presets, *long_presets):
        check_preset(preset)
    strengths(magnitude)
    flip = mirror_safe(settings.dataset_name) if flip is None else flip
    arms = [(preset, settings.epochs) for preset in presets]
    arms += [(preset, long_factor * settings.epochs) for preset in long_presets if long_factor > 1]
    plan = [(preset, epochs, settings.seed + i) for preset, epochs in arms for i in range(seeds)]
    runs = []
    for preset, epochs, seed in progress_bar(plan, desc="ablation runs", disable=not progress):
        runs.append(_ablation_run(splits, replace(settings, seed=seed, epochs=epochs), preset, magnitude, flip,
                                  random_init))
    return AblationResult(magnitude, flip, len(splits.test), runs)


def _ablation_run(splits: Splits, settings: Settings, preset: str, magnitude: float, flip: bool,
                  random_init: bool) -> AblationRun:
    train.seed_everything(settings.seed)
    model, processor = models.load_model(settings.model_name, splits.classes, random_init=random_init)
    aug = build(preset, ImageSpec.from_processor(processor), magnitude, num_classes=len(splits.classes), flip=flip)
    run = splits.with_transforms(aug.train_transform, aug.eval_transform)
    history = train.fit(model, run.train, run.val, settings, batch_transform=aug.batch_transform, progress=False)
    predictions = evaluate.predict(model, run.test, batch_size=settings.batch_size, progress=False)
    return AblationRun(preset, settings.epochs, settings.seed, history,
                       evaluate.accuracy(predictions.preds, predictions.labels))


VERDICTS = ("better", "worse", "within noise")


@checker
def check_ablation_verdict(verdict: str, result: AblationResult, preset: str, epochs: int) -> bool:
    """Exercise checker: `verdict` says whether `preset` at `epochs` is 'better', 'worse' or 'within noise' against
    `none` at the same epochs, by the noise rule on the ablation's means, seed spreads and test-set size."""
    if verdict not in VERDICTS:
        raise AssertionError(f"Answer with one of {', '.join(repr(v) for v in VERDICTS)}, got {verdict!r}.")
    expected = result.verdict(preset, epochs, ("none", epochs))
    gap = result.mean_sd(preset, epochs)[0] - result.mean_sd("none", epochs)[0]
    if verdict != expected:
        if expected == "within noise":
            raise AssertionError("Compare the gap of the means with the noise rule "
                                 "(evaluate.noise_threshold with the test images, the larger seed sd and the seeds): "
                                 "a gap inside it is no evidence either way.")
        raise AssertionError("The gap of the means is larger than the noise rule allows: look at its sign.")
    print(f"Correct: {preset} vs none at {epochs} epochs: {100 * gap:+.1f} points against a noise rule of "
          f"±{100 * result.threshold(preset, epochs, ('none', epochs)):.1f}: {expected}.")
    return True
