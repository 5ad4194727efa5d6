"""Metrics of a classifier's predictions (lesson 06): accuracy, top-k, per-class scores, confusion, intervals.

Functions take numpy arrays or torch tensors. A confusion matrix has true classes on rows,
predictions on columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import metrics

from helpers.evaluate.predict import Predictions


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


def accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the labels (lesson 06)."""
    preds, labels = _class_ids(preds, labels)
    return float(metrics.accuracy_score(labels, preds))


def top_k_accuracy(probs, labels, k: int) -> float:
    """Fraction of images whose true class is among the k highest scores (ties: lower class id first, like argmax) (lesson 06)."""
    probs, labels = _scores(probs, labels)
    num_classes = probs.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k={k} must be between 1 and the number of classes ({num_classes}).")
    top_k = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top_k == labels[:, None]).any(axis=1).mean())


def accuracy_standard_error(accuracy: float, n_images: int) -> float:
    """How far an accuracy measured on `n_images` test images is off by chance: sqrt(p (1 - p) / n) (lesson 00).

    Each test image is right with probability p (the accuracy), so the share that is right has this standard
    error; about 95% of test sets of this size land within two standard errors of the true accuracy.
    """
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be between 0 and 1; got {accuracy!r}.")
    if not (isinstance(n_images, (int, np.integer)) and n_images >= 1):
        raise ValueError(f"n_images must be a whole number of at least 1; got {n_images!r}.")
    return float(np.sqrt(accuracy * (1 - accuracy) / n_images))


def noise_threshold(accuracy: float, n_images: int, seed_sd: float = 0.0, seeds: int = 1) -> float:
    """The course's one noise rule (lesson 00): the smallest gap between two accuracies that counts as real.

    One result is uncertain by its test set's sampling error and, when it is the mean of `seeds` runs whose
    accuracies spread by `seed_sd` (a standard deviation), by that spread: se² = p (1 - p) / n + seed_sd² / seeds.
    The gap between two such results then has a standard error of √2 · se, and a gap counts only beyond twice
    that, 2 √2 · se (a chance gap exceeds it about one time in twenty). Near 97% on 270 images that is about
    3 points. Two models scored on the same test images share its sampling error, so a paired test (lesson 06)
    resolves smaller gaps; this rule is the safe reading of a results table.
    """
    if seed_sd < 0 or seeds < 1:
        raise ValueError(f"seed_sd must be >= 0 and seeds >= 1; got seed_sd={seed_sd!r}, seeds={seeds!r}.")
    variance = accuracy_standard_error(accuracy, n_images) ** 2 + seed_sd**2 / seeds
    return float(2 * np.sqrt(2 * variance))


@dataclass
class ClassScores:
    """Precision, recall and F1 of one class (or an average over classes) and its number of true images (lesson 06)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassReport:
    """Per-class scores plus macro (plain mean over classes) and weighted (by support) averages (lesson 06)."""

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
    """Precision, recall, F1 and support per class; a class never predicted gets precision 0 (not a warning) (lesson 06)."""
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
    """[num_classes, num_classes] counts: entry [i, j] is how many images of class i were predicted as j (lesson 06)."""
    preds, labels = _class_ids(preds, labels, num_classes)
    return metrics.confusion_matrix(labels, preds, labels=np.arange(num_classes))


@dataclass
class ConfusedPair:
    """How often images of ``true_class`` were predicted as ``predicted_class`` (lesson 06)."""

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
    """The k largest off-diagonal entries of a confusion matrix, largest first (pairs never confused are left out) (lesson 06)."""
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


def bootstrap_ci(correct, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval for accuracy, from per-image booleans (Predictions.correct) (lesson 06).

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


def most_confident_mistakes(predictions: Predictions, k: int = 8) -> np.ndarray:
    """Indices of the (at most) k wrong predictions with the highest confidence, most confident first (lesson 06)."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    wrong = np.flatnonzero(~predictions.correct)
    order = np.argsort(-predictions.probs[wrong].max(axis=1), kind="stable")
    return wrong[order[:k]]


@dataclass
class PairedComparison:
    """Two models on the same test images: the accuracy gain of b over a, its interval, and McNemar's test (lesson 07)."""

    accuracy_a: float
    accuracy_b: float
    only_a_right: int  # images a gets right and b gets wrong
    only_b_right: int
    p_value: float  # exact McNemar test: could the two kinds of disagreement be a coin toss?
    interval: tuple[float, float]  # paired bootstrap 95% interval of accuracy_b - accuracy_a

    @property
    def difference(self) -> float:
        return self.accuracy_b - self.accuracy_a

    def __str__(self) -> str:
        low, high = self.interval
        return (f"{self.accuracy_a:.1%} -> {self.accuracy_b:.1%} ({100 * self.difference:+.1f} points, 95% interval "
                f"[{100 * low:+.1f}, {100 * high:+.1f}]); they disagree on {self.only_a_right + self.only_b_right} "
                f"images ({self.only_b_right} only b gets right, {self.only_a_right} only a); McNemar p = "
                f"{self.p_value:.3g}")


def paired_comparison(correct_a, correct_b, n_boot: int = 2000, alpha: float = 0.05,
                      seed: int = 0) -> PairedComparison:
    """Compare two models on the same images from their per-image booleans (Predictions.correct) (lesson 07).

    Only the images they disagree on carry information: McNemar's exact test asks whether "only b right"
    outnumbers "only a right" beyond chance, and the paired bootstrap resamples images (both models
    together) for an interval of the accuracy difference, far narrower than two separate intervals.
    Each replicate is drawn as one multinomial over the disagreement counts, which is the same thing.
    """
    from scipy.stats import binomtest

    a, b = _numpy(correct_a), _numpy(correct_b)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0 or not np.isin(a, (0, 1)).all() or not np.isin(b, (0, 1)).all():
        raise ValueError("correct_a and correct_b must be 1-D booleans of the same length, one per test image "
                         "in the same order (Predictions.correct of each model).")
    _check_open_unit("alpha", alpha)
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p_value = binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    n = len(a)  # resampling image pairs = a multinomial draw over (only a right, only b right, the rest)
    draws = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], n_boot)
    differences = (draws[:, 1] - draws[:, 0]) / n
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return PairedComparison(float(a.mean()), float(b.mean()), only_a, only_b, float(p_value), (float(low), float(high)))
