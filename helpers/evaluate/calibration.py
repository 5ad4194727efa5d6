"""Calibration (lesson 06): reliability bins, expected calibration error, temperature scaling."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from helpers.evaluate.metrics import _numpy, _probabilities, _scores


@dataclass
class ReliabilityBins:
    """Predictions grouped by confidence (top probability) into equal-width bins (lo, hi] over [0, 1] (lesson 06)."""

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
    """Bin predictions by confidence and measure each bin's mean confidence and accuracy (lesson 06)."""
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
    """ECE in [0, 1] (Guo et al., 2017): 0 when confidence matches accuracy in every bin (lesson 06)."""
    return reliability_bins(probs, labels, n_bins).ece


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature) against the labels (lower is better) (lesson 06)."""
    logits, labels = _scores(logits, labels)
    scaled = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(F.cross_entropy(scaled, torch.as_tensor(labels, dtype=torch.long)))


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T); fit it on validation data, not test data (lesson 06).

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
    """Calibrated probabilities softmax(logits / temperature); T > 1 softens, T < 1 sharpens (lesson 06)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    logits = _numpy(logits)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits of shape [N, C]; got {logits.shape}.")
    return torch.as_tensor(logits / temperature).softmax(dim=1).numpy()
