"""Feeding a model (lesson 03): the DataLoader, class weights and a class-balanced sampler."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler


def class_weights(labels, num_classes: int | None = None) -> torch.Tensor:
    """Per-class loss weights N / (C * count): rare classes weigh more, and the mean weight per image is 1 (lesson 03).

    Use them as `torch.nn.CrossEntropyLoss(weight=class_weights(labels))`.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes or 0)
    if len(counts) == 0:
        raise ValueError("Class weights need at least one label.")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"Class(es) {missing} have no images, so they cannot be weighted: drop them or add images.")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def weighted_sampler(labels, num_samples: int | None = None,
                     generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A sampler that draws every class equally often (with replacement): pass it to `make_loader(sampler=...)` (lesson 03)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("A weighted sampler needs at least one label.")
    per_item = 1.0 / np.bincount(labels)[labels]
    return WeightedRandomSampler(torch.as_tensor(per_item, dtype=torch.double), num_samples or len(labels),
                                 replacement=True, generator=generator)


def make_loader(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
                num_workers: int = 0, sampler=None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader: shuffled by `shuffle_generator` (or drawn by `sampler`) for training, in order for evaluation (lesson 03).

    `pin_memory` defaults to whether CUDA is available, `persistent_workers` to `num_workers > 0`.
    """
    if sampler is not None and shuffle_generator is not None:
        raise ValueError("Give either a shuffle_generator or a sampler, not both: the sampler decides the order.")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_generator is not None,
        generator=shuffle_generator,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0,
    )
