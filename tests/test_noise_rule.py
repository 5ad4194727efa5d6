"""The course's one noise rule: the standard error of an accuracy and the smallest gap that counts as real."""
import math
import re

import numpy as np
import pytest

from helpers import evaluate


def test_standard_error_is_that_of_a_share_of_coin_flips():
    assert evaluate.accuracy_standard_error(0.5, 100) == pytest.approx(0.05)
    assert evaluate.accuracy_standard_error(1.0, 270) == 0.0
    assert evaluate.accuracy_standard_error(0.97, 4 * 270) == pytest.approx(evaluate.accuracy_standard_error(0.97, 270) / 2)


def test_the_rule_is_about_three_points_near_97_percent_on_270_images():
    threshold = evaluate.noise_threshold(0.97, 270)
    assert threshold == pytest.approx(2 * math.sqrt(2 * 0.97 * 0.03 / 270))
    assert 0.028 < threshold < 0.031
    assert evaluate.noise_threshold(0.97, 270, seed_sd=0.01, seeds=3) > threshold  # seed spread adds uncertainty
    assert evaluate.noise_threshold(0.97, 270, seed_sd=0.01, seeds=30) < evaluate.noise_threshold(
        0.97, 270, seed_sd=0.01, seeds=3)  # ... and averaging over seeds takes it away again
    with pytest.raises(ValueError, match="seed_sd must be >= 0 and seeds >= 1"):
        evaluate.noise_threshold(0.97, 270, seed_sd=-0.1)


def test_two_equally_good_models_cross_the_rule_about_one_time_in_twenty():
    rng = np.random.default_rng(0)
    p, n, trials = 0.95, 400, 20000
    gaps = np.abs(rng.binomial(n, p, trials) - rng.binomial(n, p, trials)) / n
    false_alarms = np.mean(gaps > evaluate.noise_threshold(p, n))
    assert 0.03 < false_alarms < 0.07
    better = np.abs(rng.binomial(n, 0.90, trials) / n - rng.binomial(n, p, trials) / n)
    assert np.mean(better > evaluate.noise_threshold(0.925, n)) > 0.7  # a real 5-point gap on 400 images: seen


def test_standard_error_by_hand_at_the_edges_of_its_range():
    assert evaluate.accuracy_standard_error(0.0, 10) == 0.0  # an accuracy of 0 is an accuracy, not an error
    assert evaluate.accuracy_standard_error(0.5, 1) == 0.5  # one image is a test set: sqrt(0.25 / 1)
    assert evaluate.accuracy_standard_error(0.9, np.int64(100)) == pytest.approx(math.sqrt(0.9 * 0.1 / 100), rel=1e-12)
    assert evaluate.accuracy_standard_error(0.97, 270) == pytest.approx(math.sqrt(0.97 * 0.03 / 270), rel=1e-12)


@pytest.mark.parametrize("accuracy, n, message", [
    (1.2, 10, "accuracy must be between 0 and 1; got 1.2."),
    (-0.1, 10, "accuracy must be between 0 and 1; got -0.1."),
    (0.5, 0, "n_images must be a whole number of at least 1; got 0."),
    (0.5, 2.5, "n_images must be a whole number of at least 1; got 2.5."),
])
def test_bad_input_is_named_in_one_whole_sentence(accuracy, n, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        evaluate.accuracy_standard_error(accuracy, n)


@pytest.mark.parametrize("p, n, seed_sd, seeds", [
    (0.97, 270, 0.01, 1), (0.9, 100, 0.02, 4), (0.97, 270, 0.01, 3), (0.5, 1, 0.3, 2), (0.0, 50, 0.05, 1),
])
def test_the_threshold_is_two_root_two_standard_errors_with_the_seed_spread_by_hand(p, n, seed_sd, seeds):
    by_hand = 2 * math.sqrt(2 * (p * (1 - p) / n + seed_sd**2 / seeds))
    assert evaluate.noise_threshold(p, n, seed_sd=seed_sd, seeds=seeds) == pytest.approx(by_hand, rel=1e-12)


def test_a_seed_spread_without_a_seed_count_is_the_spread_of_one_run():
    assert evaluate.noise_threshold(0.97, 270, seed_sd=0.01) == pytest.approx(
        2 * math.sqrt(2 * (0.97 * 0.03 / 270 + 0.01**2)), rel=1e-12)
    assert evaluate.noise_threshold(0.97, 270, 0.01) == evaluate.noise_threshold(0.97, 270, 0.01, 1)


@pytest.mark.parametrize("seed_sd, seeds, got", [(-0.1, 1, "seed_sd=-0.1, seeds=1"), (0.01, 0, "seed_sd=0.01, seeds=0")])
def test_a_bad_seed_spread_or_count_is_named_in_one_whole_sentence(seed_sd, seeds, got):
    message = f"seed_sd must be >= 0 and seeds >= 1; got {got}."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        evaluate.noise_threshold(0.97, 270, seed_sd=seed_sd, seeds=seeds)
