"""Evaluate image classifiers: predictions, metrics, calibration, test-time augmentation,
robustness to corruptions, uncertainty of a measured accuracy, and the matching figures.

Functions take numpy arrays or torch tensors and return numbers, numpy arrays or small
dataclasses. Shapes: ``logits`` and ``probs`` are [N, C]; ``labels`` and ``preds`` are [N]
integer class ids; a confusion matrix has true classes on rows, predictions on columns.
Figures are plain ``matplotlib.figure.Figure`` objects (not registered with pyplot), so a
notebook shows each one exactly once and scripts leak no open figures.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn import metrics
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from helpers.data import make_loader
from helpers.train import logits_of

TTA_MODES = ("flip", "flip+crops")
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
    ``tta``: None, ``"flip"`` (image + horizontal flip: 2 views) or ``"flip+crops"`` (each of
    those plus 4 copies shifted by 1/16 of the image side up, down, left and right, borders
    filled by reflection: 10 views); the views' probabilities are averaged.
    Every module's train/eval mode is restored afterwards.
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"Unknown tta={tta!r}; use None, 'flip' or 'flip+crops'.")
    if len(dataset) == 0:
        raise ValueError("predict got an empty dataset; pass a dataset with at least one image.")
    if device is not None:
        model.to(device)
    device = next(model.parameters(), torch.empty(0)).device
    loader = make_loader(dataset, batch_size, num_workers=num_workers)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    logits, labels = [], []
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc="predict", disable=not progress):
                if not images.is_floating_point():
                    raise TypeError(
                        f"predict needs float image tensors but got {images.dtype}; give the dataset "
                        "the model's eval transform (helpers.data.eval_transform)."
                    )
                logits.append(_tta_logits(model, images.to(device), tta).cpu())
                labels.append(torch.as_tensor(targets))
    finally:
        for module, training in modes.items():
            module.training = training
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
    flips = [images, images.flip(-1)]
    if tta == "flip":
        return flips
    shift = max(1, round(min(images.shape[-2:]) / 16))
    offsets = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    return [view for image in flips for view in (image, *(_shifted(image, dy, dx) for dy, dx in offsets))]


def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of [N, C, H, W] images down by dy and right by dx pixels, reflecting at the border."""
    height, width = images.shape[-2:]
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad - dy : pad - dy + height, pad - dx : pad - dx + width]


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
) -> dict[str, dict[int, float]]:
    """Accuracy under each corruption and severity: ``{kind: {0: clean, 1: ..., 5: ...}}``.

    ``dataset`` yields raw uint8 images and has ``with_transform`` (a helpers.data dataset);
    ``transform`` is the model's eval transform (e.g. helpers.data.eval_transform(spec)).
    Each corruption is applied to the raw image, at its own resolution, before ``transform``.
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
    side = min(12, 3 + 0.45 * len(class_names))
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
    fig = Figure(figsize=(5, 6), layout="constrained")
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
