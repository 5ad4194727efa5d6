"""A model's predictions over a dataset, optionally with test-time augmentation (lesson 06).

Shapes: ``logits`` and ``probs`` are [N, C]; ``labels`` and ``preds`` are [N] integer class ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from helpers.data.loaders import make_loader
from helpers.models import device_of, eval_mode
from helpers.progress import progress_bar
from helpers.train.loop import logits_of

TTA_MODES = ("flip", "crops", "flip+crops")


@dataclass
class Predictions:
    """A model's outputs on a dataset, in dataset order (lesson 06)."""

    logits: np.ndarray  # [N, C]; with TTA: log of the averaged probabilities
    probs: np.ndarray  # [N, C] softmax of logits
    labels: np.ndarray  # [N] true class ids
    preds: np.ndarray  # [N] predicted class ids (argmax)

    @property
    def correct(self) -> np.ndarray:
        """[N] booleans: True where the prediction is right."""
        return self.preds == self.labels


def predict(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 256,
    tta: str | None = None,
    device: str | torch.device | None = None,
    *,
    progress: bool = True,
    num_workers: int = 0,
) -> Predictions:
    """Run ``model`` over ``dataset`` (items: float image [3, H, W], int label) in eval mode (lesson 06).

    Works with Hugging Face classifiers (output ``.logits``) and modules returning a logits
    tensor. ``device`` moves the model there first; by default it runs where the model is.
    ``tta``: None, ``"flip"`` (image + horizontal flip: 2 views), ``"crops"`` (image + 4 copies
    shifted by 1/16 of the image side up, down, left and right, borders filled by reflection:
    5 views) or ``"flip+crops"`` (both: 10 views); the views' probabilities are averaged.
    Every module's train/eval mode is restored afterwards.
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"Unknown tta={tta!r}; use None, 'flip', 'crops' or 'flip+crops'.")
    if len(dataset) == 0:
        raise ValueError("predict got an empty dataset; pass a dataset with at least one image.")
    if device is not None:
        model.to(device)
    device = device_of(model)
    loader = make_loader(dataset, batch_size, num_workers=num_workers)
    logits, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for images, targets in progress_bar(loader, desc="predict", disable=not progress):
            if not images.is_floating_point():
                raise TypeError(
                    f"predict needs float image tensors but got {images.dtype}; give the dataset "
                    "the model's eval transform (helpers.data.eval_transform)."
                )
            logits.append(_tta_logits(model, images.to(device), tta).cpu())
            labels.append(torch.as_tensor(targets))
    all_logits = torch.cat(logits)
    probs = all_logits.softmax(dim=1)
    return Predictions(
        logits=all_logits.numpy(),
        probs=probs.numpy(),
        labels=torch.cat(labels).numpy(),
        preds=probs.argmax(dim=1).numpy(),
    )


def _tta_logits(model: torch.nn.Module, images: torch.Tensor, tta: str | None) -> torch.Tensor:
    """Logits for one batch; with TTA, the log of the views' mean probability (exact, in log space)."""
    if tta is None:
        return logits_of(model, images).float()
    views = _tta_views(images, tta)
    log_probs = torch.stack([logits_of(model, view).float().log_softmax(dim=1) for view in views])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(views))


def _tta_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    bases = [images, images.flip(-1)] if "flip" in tta else [images]
    if "crops" not in tta:
        return bases
    shift = max(1, round(min(images.shape[-2:]) / 16))
    offsets = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    return [view for image in bases for view in (image, *(_shifted(image, dy, dx) for dy, dx in offsets))]


def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of [N, C, H, W] images down by dy and right by dx pixels, reflecting at the border."""
    height, width = images.shape[-2:]
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad - dy : pad - dy + height, pad - dx : pad - dx + width]


TTA_VIEWS = {None: 1, "flip": 2, "crops": 5, "flip+crops": 10}  # forward passes per image
