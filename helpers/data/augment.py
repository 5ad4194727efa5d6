"""Augmentation presets on torchvision.transforms.v2, and MixUp/CutMix for batches (lesson 04).

Presets, mildest first (`PRESETS`):

- ``none``: resize and normalise, exactly the evaluation transform.
- ``basic``: RandomResizedCrop + horizontal flip.
- ``randaugment``: ``basic`` + RandAugment (2 random ops per image).
- ``trivialaugment``: ``basic`` + TrivialAugmentWide (1 random op, random strength).
- ``strong``: ``randaugment`` + RandomErasing, plus MixUp/CutMix on each batch.

One knob, ``magnitude`` in [0, 1], sets every strength (see `strengths`):

=====================  =================================================  =========================
transform              value at magnitude m                               m = 0 / 0.5 / 1
=====================  =================================================  =========================
crop scale (area)      (1 - 0.92 m, 1)                                    1 / 0.54 / 0.08
crop aspect ratio      ((3/4)^m, (4/3)^m)                                 1 / 0.87-1.15 / 0.75-1.33
RandAugment            magnitude round(30 m) of 31                        0 / 15 / 30
erasing probability    0.5 m                                              0 / 0.25 / 0.5
MixUp alpha            0.8 m                                              off / 0.4 / 0.8
CutMix alpha           1.0 m                                              off / 0.5 / 1.0
=====================  =================================================  =========================

At m = 1 the crop is ImageNet's standard one and MixUp/CutMix use DeiT's alphas.
TrivialAugment has no strength to set: it draws one per image, which is its point;
for it the knob sets the crop only. ``none`` ignores the knob.

Order inside a train transform: geometric and colour ops on uint8 images, then the
shared `to_model_input` (float32 + the processor's normalisation, the same last step
as evaluation), then RandomErasing on the normalised tensor (so an erased box holds 0,
which is the processor's mean colour). MixUp/CutMix run later, on float batches.

Randomness: a v2 transform draws one set of random parameters per call. The datasets
call the train transform in ``__getitem__``, once per image, so each image of a
DataLoader batch gets its own draw.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import torch
from matplotlib.figure import Figure
from torchvision.transforms import v2
from tqdm.auto import tqdm
from helpers.plots import as_displayable
from helpers.data.transforms import ImageSpec, eval_transform, to_model_input
from helpers.data.images import LabeledImages
from helpers.data.splits import Splits
from helpers.data.loaders import make_loader
from helpers.profiles import Settings


PRESETS = ("none", "basic", "randaugment", "trivialaugment", "strong")


RANDAUGMENT_BINS = 31


BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


BoxSampler = Callable[[int, int, float, torch.Generator], tuple[int, int, int, int]]


@dataclass(frozen=True)
class Strengths:
    """The concrete strength of every transform for one `magnitude` (see the module docstring) (lesson 04)."""

    magnitude: float
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    randaugment_magnitude: int
    erasing_p: float
    alpha_mixup: float
    alpha_cutmix: float
    color_jitter: float
    augmix_severity: int


@dataclass
class Augmentation:
    """A preset built for one model: per-image train and eval transforms, and an optional batch transform (lesson 04)."""

    name: str
    magnitude: float
    train_transform: v2.Transform
    eval_transform: v2.Transform
    batch_transform: BatchTransform | None


def strengths(magnitude: float) -> Strengths:
    """Map the knob `magnitude` in [0, 1] to each transform's strength (lesson 04)."""
    if not (isinstance(magnitude, (int, float)) and 0 <= magnitude <= 1):
        raise ValueError(f"magnitude must be a number in [0, 1] (0 = mildest, 1 = strongest), got {magnitude!r}.")
    m = float(magnitude)
    return Strengths(
        magnitude=m,
        crop_scale=(1 - 0.92 * m, 1.0),
        crop_ratio=((3 / 4) ** m, (4 / 3) ** m),
        randaugment_magnitude=round((RANDAUGMENT_BINS - 1) * m),
        erasing_p=0.5 * m,
        alpha_mixup=0.8 * m,
        alpha_cutmix=1.0 * m,
        color_jitter=0.8 * m,
        augmix_severity=1 + round(9 * m),
    )


def check_preset(preset: str) -> None:
    """ValueError naming the choices unless `preset` is one of `PRESETS` (lesson 04)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown augmentation preset {preset!r}; choose one of: {', '.join(PRESETS)}.")


def build(preset: str, spec: ImageSpec, magnitude: float = 0.5, *, num_classes: int | None = None) -> Augmentation:
    """The `preset` (one of `PRESETS`) at `magnitude` for images of `spec`; ``strong`` needs `num_classes` (lesson 04)."""
    check_preset(preset)
    s = strengths(magnitude)
    batch_transform = None
    if preset == "strong" and s.magnitude > 0:
        if num_classes is None:
            raise ValueError("The 'strong' preset mixes labels with MixUp/CutMix, so pass num_classes=<classes>.")
        batch_transform = mix_batch(num_classes, alpha_mixup=s.alpha_mixup, alpha_cutmix=s.alpha_cutmix)
    return Augmentation(
        name=preset,
        magnitude=s.magnitude,
        train_transform=_train_transform(preset, spec, s),
        eval_transform=eval_transform(spec),
        batch_transform=batch_transform,
    )


def _train_transform(preset: str, spec: ImageSpec, s: Strengths) -> v2.Transform:
    if preset == "none":
        return eval_transform(spec)
    steps = [v2.RandomResizedCrop(spec.size, scale=s.crop_scale, ratio=s.crop_ratio), v2.RandomHorizontalFlip()]
    if preset in ("randaugment", "strong"):
        steps.append(_randaugment(s))
    if preset == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    steps.append(to_model_input(spec))
    if preset == "strong":
        steps.append(v2.RandomErasing(p=s.erasing_p, value=0))
    return v2.Compose(steps)


def _randaugment(s: Strengths) -> v2.RandAugment:
    return v2.RandAugment(num_ops=2, magnitude=s.randaugment_magnitude, num_magnitude_bins=RANDAUGMENT_BINS)


def mix_batch(num_classes: int, alpha_mixup: float = 0.8, alpha_cutmix: float = 1.0) -> BatchTransform:
    """A batch transform (float images [B, 3, H, W], int labels [B]) -> (mixed images, soft targets [B, C]) (lesson 04).

    Each call picks MixUp or CutMix at random (v2.RandomChoice); an alpha of 0 turns
    that one off. Train on the soft targets with `helpers.train.cross_entropy`. Images
    are paired with their neighbour in the batch, so the batch must be shuffled (the
    training DataLoader is). Label smoothing is the cheap cousin: it softens every
    target towards uniform without touching the images
    (``torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)``).
    """
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    if alpha_mixup < 0 or alpha_cutmix < 0 or alpha_mixup == alpha_cutmix == 0:
        raise ValueError(
            f"alpha_mixup and alpha_cutmix must be >= 0 with at least one > 0, got {alpha_mixup} and {alpha_cutmix}."
        )
    mixers = [mixer(alpha=alpha, num_classes=num_classes)
              for mixer, alpha in ((v2.MixUp, alpha_mixup), (v2.CutMix, alpha_cutmix)) if alpha > 0]
    mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def mix_images_and_labels(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not images.is_floating_point():
            raise TypeError(
                f"MixUp/CutMix need float images, got {images.dtype}: apply the batch transform after "
                "helpers.data.to_model_input (as fit(batch_transform=...) does), not on raw uint8 images."
            )
        if labels.ndim == 1 and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels must be class ids in [0, {num_classes - 1}], got {int(labels.min())} to {int(labels.max())}."
            )
        return mix(images, labels)

    return mix_images_and_labels


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A CutMix box (x1, y1, x2, y2) inside an h x w image covering about (1 - lam) of its area (lesson 04).

    The box keeps the image's aspect ratio (sides sqrt(1 - lam) * h and * w) and lies
    wholly inside the image, so ``image[..., y1:y2, x1:x2]`` is the pasted region and
    the mixed label weight is ``1 - box_area / (h * w)``.
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1] (the share of the original image to keep), got {lam}.")
    cut = math.sqrt(1 - lam)
    box_h, box_w = round(h * cut), round(w * cut)
    y1 = int(torch.randint(h - box_h + 1, (1,), generator=generator))
    x1 = int(torch.randint(w - box_w + 1, (1,), generator=generator))
    return x1, y1, x1 + box_w, y1 + box_h
