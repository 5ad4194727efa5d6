"""Evaluation figures (lessons 06 and 07): confusion matrix, reliability diagram, error gallery.

Figures are plain ``matplotlib.figure.Figure`` objects (not registered with pyplot), so a
notebook shows each one exactly once and scripts leak no open figures.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics

from helpers.attention import overlay
from helpers.evaluate.calibration import reliability_bins
from helpers.evaluate.metrics import _check_confusion_matrix
from helpers.evaluate.predict import Predictions
from helpers.plots import as_displayable


def plot_confusion_matrix(cm, class_names: list[str], normalize: bool = False) -> Figure:
    """Heat map of a confusion matrix; ``normalize`` divides each row by its class's image count (lesson 06)."""
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
    """Reliability diagram (accuracy vs confidence per bin, gap to the diagonal shaded) over a confidence histogram (lesson 06)."""
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


def plot_error_gallery(dataset, predictions: Predictions, indices, maps, alpha: float = 0.5) -> Figure:
    """Chosen images of ``dataset`` (top row) above their attention maps overlaid (bottom row) (lesson 06).

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
