"""Lesson 06's companion: the TTA comparison, corruptions and the robustness sweep,
the sample size a comparison needs, and the exercise checkers."""
from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision import tv_tensors
from torchvision.transforms import v2

from helpers.course.checks import answer_of, checker
from helpers.evaluate.calibration import expected_calibration_error, reliability_bins
from helpers.evaluate.metrics import ClassReport, _check_open_unit, accuracy, noise_threshold, per_class_report
from helpers.evaluate.predict import TTA_MODES, TTA_VIEWS, Predictions, predict
from helpers.progress import progress_bar

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "brightness")


SEVERITIES = (1, 2, 3, 4, 5)


# Corruption strength per severity 1..5, as in CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).
_CORRUPTION_LEVELS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std on [0, 1] images
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma in pixels for a 32 px image
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value channel
}


@dataclass
class TTAResult:
    """Accuracy and cost of predicting with one test-time augmentation mode."""

    mode: str  # "none" or one of TTA_MODES
    views: int  # forward passes per image
    accuracy: float
    seconds: float  # wall time of the whole prediction (median of repeats)
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
    repeats: int = 3,
) -> list[TTAResult]:
    """Predict ``dataset`` once per TTA mode (None: no TTA): accuracy, and wall time as the median of `repeats`."""
    results = []
    for mode in progress_bar(modes, desc="tta modes", disable=not progress):
        timed = []
        for _ in range(repeats):
            started = time.perf_counter()
            predictions = predict(
                model, dataset, batch_size, tta=mode, device=device, progress=False, num_workers=num_workers
            )
            timed.append(time.perf_counter() - started)
        seconds = float(np.median(timed))
        hits = accuracy(predictions.preds, predictions.labels)
        results.append(TTAResult(mode or "none", TTA_VIEWS[mode], hits, seconds, predictions))
    return results


def tta_table(results: list[TTAResult], n_images: int | None = None) -> str:
    """A Markdown table of ``compare_tta`` results; gain and cost are relative to the first row. With `n_images`
    (the test set's size) each gain is also read with the noise rule (`noise_threshold`): real, or within noise."""
    if not results:
        raise ValueError("tta_table needs at least one TTAResult; pass the output of compare_tta.")
    base = results[0]
    lines = ["| TTA | views | accuracy | gain (points) | seconds | cost |", "|---|---:|---:|---:|---:|---:|"]
    for row in results:
        gain = f"{100 * (row.accuracy - base.accuracy):+.2f}"
        if n_images and row is not base:
            rule = noise_threshold((row.accuracy + base.accuracy) / 2, n_images)
            gain += ", real" if abs(row.accuracy - base.accuracy) > rule else ", within noise"
        cost = row.seconds / max(base.seconds, 1e-9)
        lines.append(f"| {row.mode} | {row.views} | {row.accuracy:.2%} | {gain} | {row.seconds:.2f} | {cost:.1f}x |")
    return "\n".join(lines)


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
        for kind, severity in progress_bar(steps, desc="corruptions", disable=not progress):
            corruption = functools.partial(corrupt, kind=kind, severity=severity)
            results[kind][severity] = accuracy_with(v2.Compose([corruption, transform]))
    return results


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


@checker
def check_ece(your_ece: float, probs, labels, n_bins: int = 15) -> None:
    """Checker: ``your_ece`` must match ``expected_calibration_error(probs, labels, n_bins)``."""
    if isinstance(your_ece, bool) or not isinstance(your_ece, numbers.Real):
        raise AssertionError(f"Set your ECE to a number, not {type(your_ece).__name__}.")
    bins = reliability_bins(probs, labels, n_bins)
    gaps = np.abs(bins.accuracy - bins.confidence)
    mistakes = {
        "That is the plain mean of the bins' gaps: weight each bin's gap by the fraction of images in it.":
            float(np.nanmean(gaps)),
        "That is the largest gap of any bin (the maximum calibration error): average the gaps instead, each "
        "weighted by the fraction of images in its bin.": float(np.nanmax(gaps)),
        "The gaps must not cancel: take |accuracy - confidence| in each bin before averaging.":
            float(np.nansum(bins.counts * (bins.accuracy - bins.confidence)) / bins.counts.sum()),
        "That is in percent: give the ECE as a fraction between 0 and 1.": 100 * bins.ece,
        f"Count your bins: {n_bins} equal-width bins need {n_bins + 1} edges from 0 to 1.":
            expected_calibration_error(probs, labels, n_bins - 1),
    }
    for message, wrong in mistakes.items():
        if not math.isclose(wrong, bins.ece, abs_tol=1e-6) and math.isclose(your_ece, wrong, abs_tol=1e-6):
            raise AssertionError(message)
    if not math.isclose(your_ece, bins.ece, abs_tol=1e-6):
        raise AssertionError(
            f"Your ECE {your_ece:.4g} is not the calibration error of these predictions: use {n_bins} equal-width "
            "bins of the top probability, and weight each bin's |accuracy - mean confidence| by the fraction of "
            "images in it."
        )
    print(f"Correct: ECE = {bins.ece:.4f}, the same as helpers.evaluate.expected_calibration_error.")


# A confusion matrix (rows true, columns predicted) whose lowest recall, F1, precision and support fall on four
# different classes, none of them the first: only reading the recall column finds the right one.
_RECALL_PROBE = np.array([[6, 0, 2, 5], [5, 5, 0, 3], [2, 2, 3, 0], [2, 1, 1, 5]])


def recall_probe_report() -> ClassReport:
    """The per-class report of `_RECALL_PROBE`, classes 'w', 'x', 'y', 'z' (the lowest recall is 'x')."""
    labels = np.repeat(np.arange(4), _RECALL_PROBE.sum(1))
    preds = np.concatenate([np.repeat(np.arange(4), row) for row in _RECALL_PROBE])
    return per_class_report(preds, labels, ["w", "x", "y", "z"])


@checker
def check_worst_recall(worst_recall_class, report: ClassReport) -> None:
    """Checker: ``worst_recall_class(report)`` must return the name of a class with the lowest recall (any class tied
    for it), on the lesson's ``report`` and on one where recall, F1, precision and support point at different classes.
    """
    if not callable(worst_recall_class):
        raise AssertionError("Pass your function worst_recall_class (report -> class name), not its answer: the "
                             "checker also tries it on a report where recall and F1 point at different classes.")
    for which, probe in (("this report", report), ("the checker's report", recall_probe_report())):
        answer = answer_of(f"worst_recall_class on {which}", worst_recall_class, probe)
        recall_of = {row.name: row.recall for row in probe.classes}
        if not isinstance(answer, str):
            raise AssertionError(f"Return the class's name (a row's .name), not a {type(answer).__name__}.")
        if answer not in recall_of:
            raise AssertionError(f"{answer!r} is not a class of {which}; return one of its rows' .name.")
        if recall_of[answer] != min(recall_of.values()):
            raise AssertionError(
                f"On {which}, class {answer!r} has recall {recall_of[answer]:.3f}, but some class has less: compare "
                "the recall column (found / all images of that class), not precision, F1 or support."
            )
    name = worst_recall_class(report)
    print(f"Correct: class {name} has the lowest recall, {min(r.recall for r in report.classes):.1%} of its test "
          "images found.")


@checker
def check_macro_f1(your_value: float, cm) -> None:
    """Exercise checker: `your_value` is the macro-averaged F1 of the confusion matrix `cm` (rows true classes)."""
    cm = np.asarray(cm, dtype=float)
    if not (isinstance(your_value, (int, float, np.floating)) and 0 <= your_value <= 1):
        raise AssertionError(f"Give macro-F1 as a number between 0 and 1, got {your_value!r}.")
    hits, predicted, actual = np.diag(cm), cm.sum(0), cm.sum(1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    expected = float(f1.mean())
    if math.isclose(your_value, hits.sum() / cm.sum(), abs_tol=1e-9) and not math.isclose(expected, your_value):
        raise AssertionError("That is the accuracy: macro-F1 is the plain mean of the per-class F1 scores.")
    mean_pr = 2 * precision.mean() * recall.mean() / (precision.mean() + recall.mean())
    if math.isclose(your_value, mean_pr, abs_tol=1e-6) and not math.isclose(expected, your_value, abs_tol=1e-6):
        raise AssertionError("Take the F1 of each class first, then the mean; the F1 of the mean precision and mean "
                             "recall is another number.")
    weighted = float((f1 * actual).sum() / actual.sum())
    if math.isclose(your_value, weighted, abs_tol=1e-6) and not math.isclose(expected, your_value, abs_tol=1e-6):
        raise AssertionError("That weights classes by their support: macro-F1 gives every class the same weight.")
    if not math.isclose(your_value, expected, abs_tol=1e-6):
        raise AssertionError("Per class: precision = diagonal / column sum (predicted as it), recall = diagonal / row "
                             "sum (truly it), F1 = 2 P R / (P + R); then the plain mean over classes.")
    print(f"Correct: macro-F1 = {expected:.4f}, the mean of {len(f1)} per-class F1 scores.")
