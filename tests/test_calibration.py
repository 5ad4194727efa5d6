"""helpers.evaluate.calibration by hand: reliability bins and their edges, the count-weighted ECE, the NLL at a
temperature, the fitted temperature at the NLL's minimum, and scaled probabilities."""
import math
import re
import warnings

import numpy as np
import pytest
import torch

from helpers.evaluate import calibration


def two_class(confidences, right):
    """Probabilities [N, 2] whose top probability is `confidences` (on class 0), labels right or wrong."""
    confidences = np.asarray(confidences, dtype=float)
    probs = np.stack([confidences, 1 - confidences], axis=1)
    return probs, np.where(np.asarray(right), 0, 1)


def test_reliability_bins_by_hand():
    # four bins of 0.25: confidences 0.6 and 0.7 fall in (0.5, 0.75], 0.75 too (a bin holds its upper edge),
    # 0.9 and 1.0 in (0.75, 1]
    probs, labels = two_class([0.6, 0.7, 0.75, 0.9, 1.0], [True, False, True, True, True])
    bins = calibration.reliability_bins(probs, labels, n_bins=4)
    assert bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins.counts.tolist() == [0, 0, 3, 2]
    assert np.isnan(bins.confidence[:2]).all() and np.isnan(bins.accuracy[:2]).all()  # empty bins
    assert bins.confidence[2:].tolist() == pytest.approx([(0.6 + 0.7 + 0.75) / 3, 0.95])
    assert bins.accuracy[2:].tolist() == pytest.approx([2 / 3, 1.0])
    expected = (3 * abs(2 / 3 - 2.05 / 3) + 2 * abs(1 - 0.95)) / 5  # each bin's gap weighted by its images
    assert bins.ece == pytest.approx(expected) and calibration.expected_calibration_error(probs, labels, 4) == bins.ece


def test_empty_bins_are_nan_without_a_warning():
    probs, labels = two_class([0.95], [True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 in an empty bin must not warn
        bins = calibration.reliability_bins(probs, labels, n_bins=10)
    assert np.isnan(bins.accuracy[:9]).all() and bins.accuracy[9] == 1.0


def test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    probs = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])  # top probabilities 0.5 and 1/3
    bins = calibration.reliability_bins(probs, np.array([0, 2]), n_bins=3)
    assert bins.counts.tolist() == [1, 1, 0]  # 1/3 closes bin (0, 1/3], 0.5 sits in (1/3, 2/3]
    assert bins.accuracy[:2].tolist() == [0.0, 1.0]  # argmax picks class 0 in both rows


def test_ece_default_is_fifteen_bins_and_weighs_bins_by_their_images():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.where(rng.random(400) < 0.5, probs.argmax(1), rng.integers(0, 5, 400))
    bins = calibration.reliability_bins(probs, labels)
    assert len(bins.counts) == 15 and bins.counts.sum() == 400
    gaps = np.abs(bins.accuracy - bins.confidence)
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(
        np.nansum(bins.counts * gaps) / 400)
    assert calibration.expected_calibration_error(probs, labels) != pytest.approx(np.nanmean(gaps))
    assert calibration.expected_calibration_error(probs, labels, 10) != calibration.expected_calibration_error(
        probs, labels)


def test_perfect_and_hopeless_calibration():
    probs, labels = two_class([1.0, 1.0, 1.0], [True, True, True])
    assert calibration.expected_calibration_error(probs, labels, 1) == 0.0
    probs, labels = two_class([1.0, 1.0], [False, False])
    assert calibration.expected_calibration_error(probs, labels, 1) == 1.0


@pytest.mark.parametrize("n_bins", [0, -3])
def test_at_least_one_bin(n_bins):
    probs, labels = two_class([0.6], [True])
    with pytest.raises(ValueError, match="^" + re.escape(f"n_bins must be at least 1; got {n_bins}.") + "$"):
        calibration.reliability_bins(probs, labels, n_bins)


@pytest.mark.parametrize("probs", [np.array([[2.0, -1.0]]), np.array([[0.6, 0.5]]), np.array([[0.5, 0.498]])])
def test_calibration_needs_probabilities(probs):
    message = "probs must be probabilities (rows summing to 1); pass Predictions.probs, not logits."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        calibration.expected_calibration_error(probs, np.array([0]))


def test_a_top_probability_just_above_one_lands_in_the_last_bin():
    # [1.0005, 0.0] sums to 1 within the rounding the probability check allows, so 1.0005 is a confidence
    bins = calibration.reliability_bins(np.array([[1.0005, 0.0]]), np.array([0]), n_bins=4)
    assert bins.counts.tolist() == [0, 0, 0, 1]
    assert len(bins.confidence) == len(bins.accuracy) == 4 and bins.accuracy[3] == 1.0


def test_rows_summing_to_one_within_rounding_are_probabilities():
    assert calibration.expected_calibration_error(np.array([[0.5, 0.5005]]), np.array([1])) == pytest.approx(0.4995)
    assert calibration.expected_calibration_error(np.array([[0.0, 1.0]]), np.array([1])) == 0.0


def test_negative_log_likelihood_at_a_temperature_by_hand():
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0])

    def nll(t):
        return -(math.log(1 / (1 + math.exp(-2 / t))) + math.log(1 / (1 + math.exp(1 / t)))) / 2

    assert calibration.negative_log_likelihood(logits, labels) == pytest.approx(nll(1.0), abs=1e-12)
    assert calibration.negative_log_likelihood(logits, labels, 2.0) == pytest.approx(nll(2.0), abs=1e-12)
    assert calibration.negative_log_likelihood(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels),
                                               0.5) == pytest.approx(nll(0.5), abs=1e-6)


def test_nll_is_computed_in_float64_and_takes_any_integer_labels():
    logits = torch.tensor([[0.1, 0.7, -0.3], [1.3, -0.2, 0.4]], dtype=torch.float32)
    reference = torch.nn.functional.cross_entropy(logits.double() / 0.7, torch.tensor([1, 0])).item()
    assert calibration.negative_log_likelihood(logits, np.array([1, 0], dtype=np.int32), 0.7) == pytest.approx(
        reference, abs=1e-14)  # float32 arithmetic would be off by about 1e-8


def overconfident(scale, n=600, seed=0):
    """Logits whose labels are drawn from softmax(logits / scale): the best temperature is `scale`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * 3
    probs = np.exp(logits / scale) / np.exp(logits / scale).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in probs])
    return logits, labels


@pytest.mark.parametrize("scale", [2.5, 0.5])
def test_the_fitted_temperature_is_the_nll_minimum(scale):
    logits, labels = overconfident(scale)
    t = calibration.fit_temperature(logits, labels)
    assert abs(math.log(t / scale)) < 0.25  # near the temperature the labels were drawn at
    nll = calibration.negative_log_likelihood(logits, labels, t)
    assert nll <= calibration.negative_log_likelihood(logits, labels, t * 1.02)
    assert nll <= calibration.negative_log_likelihood(logits, labels, t / 1.02)
    assert nll < calibration.negative_log_likelihood(logits, labels, 1.0)


def test_fit_temperature_takes_integer_labels_of_any_width():
    logits, labels = overconfident(2.5)
    assert calibration.fit_temperature(logits, labels.astype(np.int32)) == calibration.fit_temperature(logits, labels)


def test_float32_logits_are_fitted_in_float64():
    logits, labels = overconfident(2.5)
    as_float32 = logits.astype(np.float32)  # what a model gives
    in_float64 = calibration.fit_temperature(as_float32.astype(np.float64), labels)
    assert calibration.fit_temperature(as_float32, labels) == pytest.approx(in_float64, abs=1e-6)
    assert calibration.fit_temperature(torch.from_numpy(as_float32), labels) == pytest.approx(in_float64, abs=1e-6)


def test_max_iter_reaches_the_optimizer():
    logits, labels = overconfident(2.5)
    converged = calibration.fit_temperature(logits, labels)
    one_step = calibration.fit_temperature(logits, labels, max_iter=1)
    assert one_step != pytest.approx(converged, abs=1e-3)
    assert 1.0 < one_step < converged  # one L-BFGS iteration from T = 1 stops short of the minimum


def test_logits_with_nothing_to_scale_keep_a_temperature_of_exactly_one():
    # all-zero logits give the same NLL at every temperature: the tie goes to T = 1
    assert calibration.fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 0])) == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_fit_on_nan_or_inf_logits_falls_back_to_one(bad):
    # the fit itself ends at T = nan, which leaves T = 1 as the only candidate
    assert calibration.fit_temperature(np.array([[bad, 0.0], [1.0, 0.0]]), np.array([0, 1])) == 1.0


def test_fit_temperature_takes_tensors_and_keeps_one_when_nothing_is_better():
    logits, labels = overconfident(1.0)
    t = calibration.fit_temperature(torch.tensor(logits), torch.tensor(labels))
    assert calibration.negative_log_likelihood(logits, labels, t) <= calibration.negative_log_likelihood(
        logits, labels, 1.0)
    assert isinstance(t, float) and t > 0


def test_apply_temperature_softens_and_sharpens():
    logits = np.array([[2.0, 0.0, -1.0]])
    for t in (0.5, 1.0, 3.0):
        expected = np.exp(logits[0] / t) / np.exp(logits[0] / t).sum()
        assert calibration.apply_temperature(logits, t)[0] == pytest.approx(expected)
    assert calibration.apply_temperature(torch.tensor(logits), 2.0).max() < calibration.apply_temperature(
        logits, 1.0).max()
    assert isinstance(calibration.apply_temperature(torch.tensor(logits), 2.0), np.ndarray)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_temperature_needs_a_positive_number(temperature):
    message = f"temperature must be a positive number; got {temperature!r}."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        calibration.apply_temperature(np.zeros((1, 2)), temperature)


def test_apply_temperature_needs_n_by_c_logits():
    with pytest.raises(ValueError, match="^" + re.escape("Expected logits of shape [N, C]; got (3,).") + "$"):
        calibration.apply_temperature(np.zeros(3), 1.0)
