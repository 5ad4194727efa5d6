"""Evaluate image classifiers: predictions, metrics, calibration, test-time augmentation,
robustness to corruptions, uncertainty of a measured accuracy, error analysis with attention
rollout, shipping checks (throughput, size, ONNX), and the matching figures.

``finetuned(settings)`` gives a lesson its fine-tuned model: trained once with
``helpers.train.fit`` and cached on disk, keyed by the settings.

Functions take numpy arrays or torch tensors and return numbers, numpy arrays or small
dataclasses. Shapes: ``logits`` and ``probs`` are [N, C]; ``labels`` and ``preds`` are [N]
integer class ids; a confusion matrix has true classes on rows, predictions on columns.
Figures are plain ``matplotlib.figure.Figure`` objects (not registered with pyplot), so a
notebook shows each one exactly once and scripts leak no open figures.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn import metrics
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from helpers import models
from helpers.attention import attention_rollout, overlay
from helpers.data import ImageSpec, Splits, eval_transform, load_dataset, make_loader, read_rgb
from helpers.plots import as_displayable
from helpers.profiles import Settings, device_name
from helpers.scratch import grid_size
from helpers.train import History, fit, logits_of

TTA_MODES = ("flip", "crops", "flip+crops")
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "brightness")
SEVERITIES = (1, 2, 3, 4, 5)

# Corruption strength per severity 1..5, as in CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).
_CORRUPTION_LEVELS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std on [0, 1] images
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma in pixels for a 32 px image
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value channel
}


# ---------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """A model's outputs on a dataset, in dataset order."""

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
    """Run ``model`` over ``dataset`` (items: float image [3, H, W], int label) in eval mode.

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
    device = _device_of(model)
    loader = make_loader(dataset, batch_size, num_workers=num_workers)
    logits, labels = [], []
    with _eval_mode(model), torch.inference_mode():
        for images, targets in tqdm(loader, desc="predict", disable=not progress):
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


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Put every module in eval mode for the block, then restore each one's own train/eval mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


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


@dataclass
class TTAResult:
    """Accuracy and cost of predicting with one test-time augmentation mode."""

    mode: str  # "none" or one of TTA_MODES
    views: int  # forward passes per image
    accuracy: float
    seconds: float  # wall time of the whole prediction
    predictions: Predictions


def compare_tta(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 256,
    modes: tuple[str | None, ...] = (None, *TTA_MODES),
    device: str | torch.device | None = None,
    *,
    progress: bool = True,
    num_workers: int = 0,
) -> list[TTAResult]:
    """Predict ``dataset`` once per TTA mode (None: no TTA) and measure accuracy and wall time of each."""
    results = []
    for mode in tqdm(modes, desc="tta modes", disable=not progress):
        started = time.perf_counter()
        predictions = predict(
            model, dataset, batch_size, tta=mode, device=device, progress=False, num_workers=num_workers
        )
        seconds = time.perf_counter() - started
        hits = accuracy(predictions.preds, predictions.labels)
        results.append(TTAResult(mode or "none", TTA_VIEWS[mode], hits, seconds, predictions))
    return results


def tta_table(results: list[TTAResult]) -> str:
    """A Markdown table of ``compare_tta`` results; gain and cost are relative to the first row."""
    if not results:
        raise ValueError("tta_table needs at least one TTAResult; pass the output of compare_tta.")
    base = results[0]
    lines = ["| TTA | views | accuracy | gain (points) | seconds | cost |", "|---|---:|---:|---:|---:|---:|"]
    for row in results:
        gain = 100 * (row.accuracy - base.accuracy)
        cost = row.seconds / max(base.seconds, 1e-9)
        lines.append(
            f"| {row.mode} | {row.views} | {row.accuracy:.2%} | {gain:+.2f} | {row.seconds:.2f} | {cost:.1f}x |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- input checks


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _check_class_ids(ids: np.ndarray, num_classes: int, what: str) -> None:
    if ids.min() < 0 or ids.max() >= num_classes:
        raise ValueError(
            f"{what} must be class ids from 0 to {num_classes - 1}, but range from {ids.min()} to {ids.max()}; "
            "check that the number of classes matches the model."
        )


def _class_ids(preds, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = _numpy(preds), _numpy(labels)
    if preds.ndim != 1 or preds.shape != labels.shape or len(labels) == 0:
        raise ValueError(
            "preds and labels must be non-empty 1-D arrays of the same length; "
            f"got shapes {preds.shape} and {labels.shape}."
        )
    if num_classes is not None:
        _check_class_ids(preds, num_classes, "preds")
        _check_class_ids(labels, num_classes, "labels")
    return preds, labels


def _scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Check [N, C] scores (logits or probabilities) against [N] labels."""
    scores, labels = _numpy(scores), _numpy(labels)
    if scores.ndim != 2 or labels.shape != (len(scores),) or len(labels) == 0:
        raise ValueError(
            "Expected scores of shape [N, C] and labels of shape [N] with N > 0; "
            f"got {scores.shape} and {labels.shape}."
        )
    _check_class_ids(labels, scores.shape[1], "labels")
    return scores, labels


def _probabilities(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _scores(probs, labels)
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise ValueError("probs must be probabilities (rows summing to 1); pass Predictions.probs, not logits.")
    return probs, labels


def _check_open_unit(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be strictly between 0 and 1; got {value!r}.")


# ---------------------------------------------------------------------------- metrics


def accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the labels."""
    preds, labels = _class_ids(preds, labels)
    return float(metrics.accuracy_score(labels, preds))


def top_k_accuracy(probs, labels, k: int) -> float:
    """Fraction of images whose true class is among the k highest scores (ties: lower class id first, like argmax)."""
    probs, labels = _scores(probs, labels)
    num_classes = probs.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k={k} must be between 1 and the number of classes ({num_classes}).")
    top_k = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top_k == labels[:, None]).any(axis=1).mean())


@dataclass
class ClassScores:
    """Precision, recall and F1 of one class (or an average over classes) and its number of true images."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassReport:
    """Per-class scores plus macro (plain mean over classes) and weighted (by support) averages."""

    classes: list[ClassScores]
    macro: ClassScores
    weighted: ClassScores
    accuracy: float

    def to_markdown(self, digits: int = 3) -> str:
        """The report as a Markdown table, one row per class, then the two averages."""
        lines = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
        for row in [*self.classes, self.macro, self.weighted]:
            scores = " | ".join(f"{value:.{digits}f}" for value in (row.precision, row.recall, row.f1))
            lines.append(f"| {row.name} | {scores} | {row.support} |")
        lines.append(f"\naccuracy: {self.accuracy:.{digits}f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def per_class_report(preds, labels, class_names: list[str]) -> ClassReport:
    """Precision, recall, F1 and support per class; a class never predicted gets precision 0 (not a warning)."""
    preds, labels = _class_ids(preds, labels, len(class_names))
    ids = np.arange(len(class_names))

    def scores(average: str | None):
        return metrics.precision_recall_fscore_support(labels, preds, labels=ids, average=average, zero_division=0)

    precision, recall, f1, support = scores(None)
    classes = [
        ClassScores(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]
    macro, weighted = (
        ClassScores(f"{how} avg", *map(float, scores(how)[:3]), len(labels)) for how in ("macro", "weighted")
    )
    return ClassReport(classes, macro, weighted, accuracy(preds, labels))


def confusion_matrix(preds, labels, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts: entry [i, j] is how many images of class i were predicted as j."""
    preds, labels = _class_ids(preds, labels, num_classes)
    return metrics.confusion_matrix(labels, preds, labels=np.arange(num_classes))


@dataclass
class ConfusedPair:
    """How often images of ``true_class`` were predicted as ``predicted_class``."""

    true_class: str
    predicted_class: str
    count: int
    fraction: float  # of all images of true_class


def _check_confusion_matrix(cm, class_names: list[str]) -> np.ndarray:
    cm = _numpy(cm)
    if cm.ndim != 2 or cm.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"Expected a square confusion matrix with one row per class ({len(class_names)}); got shape {cm.shape}."
        )
    return cm


def most_confused_pairs(cm, class_names: list[str], k: int = 5) -> list[ConfusedPair]:
    """The k largest off-diagonal entries of a confusion matrix, largest first (pairs never confused are left out)."""
    cm = _check_confusion_matrix(cm, class_names)
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    mistakes = cm.copy()
    np.fill_diagonal(mistakes, 0)
    pairs = []
    for flat_index in np.argsort(-mistakes, axis=None, kind="stable")[:k]:
        true_id, predicted_id = divmod(int(flat_index), len(class_names))
        count = int(mistakes[true_id, predicted_id])
        if count == 0:
            break
        fraction = count / float(cm[true_id].sum())
        pairs.append(ConfusedPair(class_names[true_id], class_names[predicted_id], count, fraction))
    return pairs


# ---------------------------------------------------------------------------- calibration


@dataclass
class ReliabilityBins:
    """Predictions grouped by confidence (top probability) into equal-width bins (lo, hi] over [0, 1]."""

    edges: np.ndarray  # [n_bins + 1]
    confidence: np.ndarray  # [n_bins] mean confidence per bin; nan where empty
    accuracy: np.ndarray  # [n_bins] accuracy per bin; nan where empty
    counts: np.ndarray  # [n_bins] predictions per bin

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap |accuracy - confidence| over the bins."""
        gaps = np.abs(self.accuracy - self.confidence)
        return float(np.nansum(self.counts * gaps) / self.counts.sum())


def reliability_bins(probs, labels, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by confidence and measure each bin's mean confidence and accuracy."""
    probs, labels = _probabilities(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}.")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bin_ids, minlength=n_bins)
    with np.errstate(invalid="ignore"):  # empty bins: 0 / 0 = nan
        mean_confidence = np.bincount(bin_ids, weights=confidence, minlength=n_bins) / counts
        bin_accuracy = np.bincount(bin_ids, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(edges, mean_confidence, bin_accuracy, counts)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE in [0, 1] (Guo et al., 2017): 0 when confidence matches accuracy in every bin."""
    return reliability_bins(probs, labels, n_bins).ece


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature) against the labels (lower is better)."""
    logits, labels = _scores(logits, labels)
    scaled = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(F.cross_entropy(scaled, torch.as_tensor(labels, dtype=torch.long)))


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T); fit it on validation data, not test data.

    Optimises log T with L-BFGS (so T stays positive). T = 1 (no change) is kept as a candidate,
    so the result never increases the NLL on the data it was fitted on.
    """
    logits, labels = _scores(logits, labels)
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_t / log_temperature.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = log_temperature.detach().exp().item()
    candidates = [1.0, fitted] if math.isfinite(fitted) and fitted > 0 else [1.0]
    return min(candidates, key=lambda t: negative_log_likelihood(logits, labels, t))


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / temperature); T > 1 softens, T < 1 sharpens."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    logits = _numpy(logits)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits of shape [N, C]; got {logits.shape}.")
    return torch.as_tensor(logits / temperature).softmax(dim=1).numpy()


# ---------------------------------------------------------------------------- robustness


def _check_corruption(kind: str, severity: int) -> None:
    if kind not in _CORRUPTION_LEVELS:
        raise ValueError(f"Unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5; got {severity!r}.")


def corrupt(images: torch.Tensor, kind: str, severity: int, seed: int | None = None) -> torch.Tensor:
    """A CIFAR-10-C style corrupted copy of an image [3, H, W] or batch [N, 3, H, W].

    ``images``: uint8, or float in [0, 1] (apply before the model's Normalize); the result has
    the same dtype, shape and tensor type. ``kind``: gaussian_noise (additive noise),
    gaussian_blur (sigma scaled by the image side / 32, so a 32 px image gets exactly the
    CIFAR-10-C blur) or brightness (HSV value + c). ``severity``: 1 (mild) to 5 (strong).
    ``seed`` makes the noise reproducible; None uses torch's global generator.
    """
    _check_corruption(kind, severity)
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError("corrupt expects an RGB image tensor [3, H, W] or a batch [N, 3, H, W].")
    x = _unit_float(images)
    level = _CORRUPTION_LEVELS[kind][severity - 1]
    if kind == "gaussian_noise":
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        out = x + level * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    elif kind == "gaussian_blur":
        sigma = level * min(x.shape[-2:]) / 32
        size = 2 * math.ceil(4 * sigma) + 1
        out = v2.functional.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])
    else:
        out = _brighten(x, level)
    return _like(out.clamp(0, 1), images)


def _unit_float(images: torch.Tensor) -> torch.Tensor:
    images = images.as_subclass(torch.Tensor)
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
        raise ValueError(
            "corrupt expects uint8 images or float images in [0, 1]; apply it before the model's Normalize transform."
        )
    return images


def _like(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Give a [0, 1] float result the dtype and tensor type of the input images."""
    out = (out * 255).round().to(torch.uint8) if images.dtype == torch.uint8 else out.to(images.dtype)
    return tv_tensors.wrap(out, like=images) if isinstance(images, tv_tensors.TVTensor) else out


def _brighten(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Add ``amount`` to the HSV value (= max of R, G, B), keeping hue and saturation.

    With hue and saturation fixed, RGB is proportional to the value, so every channel is scaled
    by new_value / value; black pixels (value 0, saturation 0) become grey.
    """
    value = x.amax(dim=-3, keepdim=True)
    new_value = (value + amount).clamp(max=1)
    return torch.where(value > 0, x * new_value / value, new_value)


def robustness_sweep(
    model: torch.nn.Module,
    dataset,
    transform,
    kinds: tuple[str, ...] = CORRUPTIONS,
    severities: tuple[int, ...] = SEVERITIES,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int | None = 0,
) -> dict[str, dict[int, float]]:
    """Accuracy under each corruption and severity: ``{kind: {0: clean, 1: ..., 5: ...}}``.

    ``dataset`` yields raw uint8 images and has ``with_transform`` (a helpers.data dataset);
    ``transform`` is the model's eval transform (e.g. helpers.data.eval_transform(spec)).
    Each corruption is applied to the raw image, at its own resolution, before ``transform``.
    ``seed`` makes the random noise, and so the results, reproducible without reseeding torch's
    global generator (None: draw the noise from the global generator).
    """
    for kind in kinds:
        for severity in severities:
            _check_corruption(kind, severity)

    def accuracy_with(sample_transform) -> float:
        transformed = dataset.with_transform(sample_transform)
        predictions = predict(model, transformed, batch_size, device=device, progress=False)
        return accuracy(predictions.preds, predictions.labels)

    clean = accuracy_with(transform)
    results = {kind: {0: clean} for kind in kinds}
    steps = [(kind, severity) for kind in kinds for severity in severities]
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for kind, severity in tqdm(steps, desc="corruptions", disable=not progress):
            corruption = functools.partial(corrupt, kind=kind, severity=severity)
            results[kind][severity] = accuracy_with(v2.Compose([corruption, transform]))
    return results


# ---------------------------------------------------------------------------- uncertainty


def bootstrap_ci(correct, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval for accuracy, from per-image booleans (Predictions.correct).

    Resampling the n outcomes with replacement and counting the correct ones is exactly a
    Binomial(n, accuracy) draw, so each bootstrap replicate is drawn as one binomial number.
    """
    correct = _numpy(correct)
    if correct.ndim != 1 or len(correct) == 0 or not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must be a non-empty 1-D array of booleans (or 0/1), e.g. Predictions.correct.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}.")
    _check_open_unit("alpha", alpha)
    n = len(correct)
    replicates = np.random.default_rng(seed).binomial(n, correct.mean(), size=n_boot) / n
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def samples_needed(acc_a: float, acc_b: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Test images per model needed to tell accuracies acc_a and acc_b apart.

    Two-sided two-proportion z-test on independent samples, normal approximation without
    continuity correction, with p = (acc_a + acc_b) / 2:
        n = (z[1 - alpha/2] * sqrt(2 p (1 - p)) + z[power] * sqrt(a (1 - a) + b (1 - b)))^2 / (a - b)^2
    Two models scored on the same test images can be compared with fewer (paired, McNemar's test).
    """
    for name, value in (("acc_a", acc_a), ("acc_b", acc_b)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be an accuracy between 0 and 1; got {value!r}.")
    if acc_a == acc_b:
        raise ValueError("acc_a and acc_b are equal; no test set size tells identical accuracies apart.")
    _check_open_unit("alpha", alpha)
    _check_open_unit("power", power)
    pooled = (acc_a + acc_b) / 2
    spread_null = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(2 * pooled * (1 - pooled))
    spread_alt = NormalDist().inv_cdf(power) * math.sqrt(acc_a * (1 - acc_a) + acc_b * (1 - acc_b))
    return math.ceil((spread_null + spread_alt) ** 2 / (acc_a - acc_b) ** 2)


# ---------------------------------------------------------------------------- figures


def plot_confusion_matrix(cm, class_names: list[str], normalize: bool = False) -> Figure:
    """Heat map of a confusion matrix; ``normalize`` divides each row by its class's image count."""
    cm = _check_confusion_matrix(cm, class_names)
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    side = min(10, 2 + 0.4 * len(class_names))
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    metrics.ConfusionMatrixDisplay(values, display_labels=class_names).plot(
        ax=fig.subplots(),
        include_values=len(class_names) <= 20,
        values_format=".2f" if normalize else "d",
        xticks_rotation="vertical",
        colorbar=True,
    )
    return fig


def plot_reliability(probs, labels, n_bins: int = 15) -> Figure:
    """Reliability diagram (accuracy vs confidence per bin, gap to the diagonal shaded) over a confidence histogram."""
    bins = reliability_bins(probs, labels, n_bins)
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = 1 / n_bins
    fig = Figure(figsize=(4.2, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = bins.counts > 0
    top.bar(centers[filled], bins.accuracy[filled], width=width, edgecolor="black", label="accuracy")
    top.bar(
        centers[filled],
        (bins.confidence - bins.accuracy)[filled],
        bottom=bins.accuracy[filled],
        width=width,
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"Reliability (ECE = {bins.ece:.2%})")
    top.legend(loc="upper left")
    bottom.bar(centers, bins.counts, width=width, color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (top probability)", ylabel="images", xlim=(0, 1))
    return fig


def plot_robustness(results: dict[str, dict[int, float]]) -> Figure:
    """Accuracy against severity, one line per corruption (the output of ``robustness_sweep``)."""
    if not results:
        raise ValueError("plot_robustness needs results like {'gaussian_noise': {0: 0.9, 1: 0.85, ...}}; got none.")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for kind, by_severity in results.items():
        severities = sorted(by_severity)
        ax.plot(severities, [by_severity[s] for s in severities], marker="o", label=kind)
    ax.set_xticks(sorted({severity for by_severity in results.values() for severity in by_severity}))
    ax.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1.02), title="Robustness to corruptions")
    ax.legend()
    return fig


def plot_error_gallery(dataset, predictions: Predictions, indices, maps, alpha: float = 0.5) -> Figure:
    """Chosen images of ``dataset`` (top row) above their attention maps overlaid (bottom row).

    ``indices`` index both ``dataset`` (raw images via ``dataset.image``) and ``predictions``;
    ``maps`` is [len(indices), rows, cols], e.g. from ``rollout_maps``. Titles: true -> predicted (confidence).
    """
    indices = [int(i) for i in indices]
    if not indices or len(maps) != len(indices):
        raise ValueError(
            f"Give one or more indices and one map per index; got {len(indices)} indices and {len(maps)} maps."
        )
    fig = Figure(figsize=(1.6 * len(indices), 3.8), layout="constrained")
    axes = fig.subplots(2, len(indices), squeeze=False)
    for column, (index, heatmap) in enumerate(zip(indices, maps)):
        image = dataset.image(index)
        true_name = dataset.classes[predictions.labels[index]]
        predicted_name = dataset.classes[predictions.preds[index]]
        confidence = predictions.probs[index].max()
        axes[0, column].imshow(as_displayable(image), interpolation="nearest")
        axes[0, column].set_title(f"{true_name} -> {predicted_name}\n({confidence:.0%})", fontsize=9)
        axes[1, column].imshow(overlay(image, heatmap, alpha))
    for ax in axes.flat:
        ax.axis("off")
    axes[1, 0].set_title("rollout", fontsize=9, loc="left")
    return fig


# ---------------------------------------------------------------------------- error analysis


def most_confident_mistakes(predictions: Predictions, k: int = 8) -> np.ndarray:
    """Indices of the (at most) k wrong predictions with the highest confidence, most confident first."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    wrong = np.flatnonzero(~predictions.correct)
    order = np.argsort(-predictions.probs[wrong].max(axis=1), kind="stable")
    return wrong[order[:k]]


def rollout_maps(
    model: torch.nn.Module, dataset, indices, discard_ratio: float = 0.0, head_fusion: str = "mean"
) -> torch.Tensor:
    """Attention rollout ([len(indices), rows, cols]) of a transformers ViT on the chosen items of ``dataset``.

    ``dataset`` yields model-ready images (with the eval transform). The model must return attention
    weights: load it with ``attn_implementation="eager"``. See ``helpers.attention.attention_rollout``.
    """
    indices = [int(i) for i in indices]
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    if patch_size is None:
        raise ValueError("rollout_maps needs a transformers ViT: a model whose config has a patch_size.")
    if not indices:
        raise ValueError("rollout_maps got no indices; pass the images to explain, e.g. most_confident_mistakes(...).")
    images = torch.stack([dataset[index][0] for index in indices])
    grid = grid_size(tuple(images.shape[-2:]), patch_size)
    with _eval_mode(model), torch.inference_mode():
        attentions = model(images.to(_device_of(model)), output_attentions=True).attentions
    return torch.stack(
        [
            attention_rollout(attentions, discard_ratio, head_fusion, grid=grid, index=position)
            for position in range(len(indices))
        ]
    )


# ---------------------------------------------------------------------------- a cached fine-tune

FINETUNED_CACHE = Path.home() / ".cache" / "vit-course" / "finetuned"
_SETTINGS_NOT_IN_KEY = ("profile", "reason", "num_workers")  # they do not change the trained weights


@dataclass
class FineTuned:
    """A fine-tuned classifier with its data and training history, as ``finetuned`` returns it."""

    model: torch.nn.Module  # in eval mode, on the best device here
    processor: object  # its image processor
    splits: Splits  # train / val / test, each with the model's eval transform
    spec: ImageSpec
    history: History
    folder: Path  # the cached fine-tune, in save_pretrained format
    reused: bool  # True when loaded from the cache, False when trained just now


def finetune_key(settings: Settings) -> str:
    """A short hash of what decides the fine-tuned weights: the settings, and the files of a local starting model."""
    values = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in _SETTINGS_NOT_IN_KEY}
    source, local = models.resolve_source(settings.model_name)
    if local:
        files = sorted(path for path in Path(source).rglob("*") if path.is_file())
        values["model_files"] = {str(path.relative_to(source)): _file_digest(path) for path in files}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def finetuned(
    settings: Settings,
    *,
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    progress: bool = True,
) -> FineTuned:
    """Fine-tune ``settings.model_name`` on ``settings.dataset_name``, or reuse the fine-tune cached for these settings.

    Training is ``helpers.train.fit`` on the training split with the model's eval transform. The
    result is saved with ``save_pretrained`` (plus ``history.json`` and ``settings.json``) in
    ``cache_dir`` (default ~/.cache/vit-course/finetuned) under ``finetune_key(settings)``. The
    model returned is always loaded from that folder, so a fresh and a reused fine-tune are the
    same; ``attn_implementation="eager"`` makes it return attention weights.
    """
    splits = load_dataset(
        settings.dataset_name, seed=settings.seed, train_size=settings.train_size, eval_size=settings.eval_size
    )
    folder = Path(cache_dir if cache_dir is not None else FINETUNED_CACHE).expanduser() / finetune_key(settings)
    reused = (folder / "history.json").is_file()
    if not reused:
        _train_into(folder, settings, splits, progress)
    model, processor = models.load_model(str(folder), splits.classes, attn_implementation=attn_implementation)
    model.to(device_name()).eval()
    spec = ImageSpec.from_processor(processor)
    history = History(rows=json.loads((folder / "history.json").read_text()))
    return FineTuned(model, processor, splits.with_transforms(eval_transform(spec)), spec, history, folder, reused)


def _train_into(folder: Path, settings: Settings, splits: Splits, progress: bool) -> None:
    """Fine-tune and save into ``folder``, written under a temporary name first so a finished folder is complete."""
    model, processor = models.load_model(settings.model_name, splits.classes)
    ready = splits.with_transforms(eval_transform(ImageSpec.from_processor(processor)))
    history = fit(model, ready.train, ready.val, settings, progress=progress)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "settings.json").write_text(json.dumps(asdict(settings), indent=1))
    (staging / "history.json").write_text(json.dumps(history.rows, indent=1))
    try:
        staging.rename(folder)
    except OSError:  # another run cached the same settings meanwhile
        shutil.rmtree(staging)


# ---------------------------------------------------------------------------- shipping


def classify_file(model: torch.nn.Module, path: str | os.PathLike, transform) -> tuple[str, float]:
    """Top-1 class name (from ``model.config.id2label``) and its probability for one image file.

    The file is read with ``helpers.data.read_rgb`` and passed through ``transform`` (the model's eval
    transform), exactly as the kit's datasets do.
    """
    image = transform(tv_tensors.Image(read_rgb(Path(path))))
    with _eval_mode(model), torch.inference_mode():
        probs = logits_of(model, image[None].to(_device_of(model))).float().softmax(dim=-1)[0]
    top = int(probs.argmax())
    return model.config.id2label[top], float(probs[top])


def throughput(
    model: torch.nn.Module,
    image_size: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128),
    *,
    min_seconds: float = 0.5,
    precision: str = "no",
) -> dict[int, float]:
    """Inference images per second for each batch size, on random images [B, 3, H, W] where the model is.

    Per batch size: one untimed warm-up pass, then passes until ``min_seconds`` have gone by (CUDA is
    synchronised before the clock is read). ``precision`` "bf16" or "fp16" autocasts on a GPU.
    """
    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16'; got {precision!r}.")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be one or more positive integers; got {batch_sizes!r}.")
    device = _device_of(model)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "no" and device.type == "cuda"
        else nullcontext()
    )
    results = {}
    with _eval_mode(model), torch.inference_mode(), autocast:
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, *image_size, device=device)
            logits_of(model, images)
            passes, started = 0, time.perf_counter()
            while True:
                logits_of(model, images)
                passes += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - started
                if elapsed >= min_seconds:
                    break
            results[batch_size] = passes * batch_size / elapsed
    return results


def size_on_disk(folder: str | os.PathLike) -> int:
    """Bytes taken by all files under ``folder`` (e.g. a save_pretrained folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder at {folder}: save the model there first (save_pretrained).")
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def onnx_available() -> bool:
    """True when ONNX export can run here: torch's exporter needs the onnx and onnxscript packages."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


class _LogitsOnly(torch.nn.Module):
    """Wraps a classifier so its forward returns the logits tensor alone (what ONNX export needs)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, images)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, example_images: torch.Tensor) -> Path:
    """Export the classifier to one ONNX file: input ``images`` [batch, 3, H, W] (any batch), output ``logits``."""
    if not onnx_available():
        raise ModuleNotFoundError(
            "ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript onnxruntime."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _LogitsOnly(model)
    with _eval_mode(wrapped):
        torch.onnx.export(
            wrapped,
            (example_images.to(_device_of(model)),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim.DYNAMIC}},
            external_data=False,
            dynamo=True,
        )
    return path


def onnx_max_difference(path: str | os.PathLike, model: torch.nn.Module, images: torch.Tensor) -> float:
    """Largest absolute difference between the logits of an exported ONNX file and of the PyTorch model.

    Runs the file with onnxruntime when it is installed, else with onnx's (slow) reference evaluator.
    """
    inputs = images.detach().float().cpu().numpy()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    else:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))
        onnx_logits = evaluator.run(None, {evaluator.input_names[0]: inputs})[0]
    with _eval_mode(model), torch.inference_mode():
        torch_logits = logits_of(model, images.to(_device_of(model))).float().cpu().numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


# ---------------------------------------------------------------------------- exercise checkers


def check_ece(your_ece: float, probs, labels, n_bins: int = 15) -> None:
    """Checker: ``your_ece`` must match ``expected_calibration_error(probs, labels, n_bins)``."""
    expected = expected_calibration_error(probs, labels, n_bins)
    if not isinstance(your_ece, (int, float, np.floating)) or not math.isclose(your_ece, expected, abs_tol=1e-6):
        raise AssertionError(
            f"Your ECE {your_ece!r} is not the expected value: use {n_bins} equal-width bins of the top probability, "
            "and weight each bin's |accuracy - mean confidence| by the fraction of images in it."
        )
    print(f"Correct: ECE = {expected:.4f}, the same as helpers.evaluate.expected_calibration_error.")


def check_worst_recall(your_class, report: ClassReport) -> None:
    """Checker: ``your_class`` (a class name) must have the lowest recall in ``report`` (any class tied for it)."""
    worst = min(row.recall for row in report.classes)
    recall_of = {row.name: row.recall for row in report.classes}
    if str(your_class) not in recall_of:
        raise AssertionError(f"{your_class!r} is not a class of this report; pick one of {', '.join(recall_of)}.")
    if recall_of[str(your_class)] != worst:
        raise AssertionError(
            f"Class {your_class!r} has recall {recall_of[str(your_class)]:.3f}, but some class has less: "
            "compare the recall column (found / all images of that class), not precision or F1."
        )
    print(f"Correct: class {your_class} has the lowest recall, {worst:.1%} of its test images found.")
