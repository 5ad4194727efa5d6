"""Figures and tables shared by the lessons (matplotlib, markdown). Lesson-only figures live in the lesson's companion."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def as_displayable(image, spec=None) -> np.ndarray:
    """An image tensor [3, H, W] (uint8, float in [0, 1], or normalised by `spec`, a `data.ImageSpec`)
    as an H x W x 3 array in [0, 1] for imshow (lesson 03)."""
    image = torch.as_tensor(image).detach().cpu()
    if image.dtype == torch.uint8:
        image = image.float() / 255
    elif spec is not None:
        image = image * torch.tensor(spec.std).view(3, 1, 1) + torch.tensor(spec.mean).view(3, 1, 1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def image_grid(images, titles=None, columns: int = 8, size: float = 1.3, suptitle: str = ""):
    """A grid of images with optional titles; returns the Figure (lesson 00)."""
    images = list(images)
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size * 1.1), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(as_displayable(images[index]), interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[index]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def samples_per_class(dataset, per_class: int = 6, seed: int = 0):
    """A grid with one row per class (up to 10 classes) of raw images from a `helpers.data` dataset (lesson 00)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels)
    classes = np.unique(labels)[:10]
    chosen = [i for c in classes for i in rng.permutation(np.flatnonzero(labels == c))[:per_class]]
    images = [dataset.image(i) for i in chosen]
    titles = [dataset.classes[labels[i]] for i in chosen]
    return image_grid(images, titles, columns=per_class, suptitle="samples per class")


def bar_chart(names, values, ylabel: str, title: str = "", value_format: str = "{:.1%}"):
    """A labelled bar chart (e.g. accuracy per strategy); returns the Figure (lesson 04)."""
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.2))
    bars = ax.bar([str(n) for n in names], values, color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, labels=[value_format.format(v) for v in values], fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a markdown table (display it with IPython.display.Markdown) (lesson 03)."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def format_cell(value) -> str:


    """One table cell: yes/no for booleans, 3 significant digits for small floats, thousands for large (lesson 03)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
