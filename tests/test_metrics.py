"""helpers.evaluate.metrics against hand counts: accuracy, top-k, per-class scores and their table, confusion,
the most confused pairs, the bootstrap interval, the most confident mistakes, the paired comparison of two
models, and the one-sentence errors."""
import re

import numpy as np
import pytest
import torch

from helpers.evaluate import metrics
from helpers.evaluate.predict import Predictions

# 10 images of classes a, b, c. True a: 4 (3 found, 1 called b); true b: 3 (1 found, 2 called c);
# true c: 3 (all found). Predicted a: 3, b: 2, c: 5.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
NAMES = ["a", "b", "c"]


def test_accuracy_counts_right_predictions_of_numpy_lists_and_tensors():
    assert metrics.accuracy(PREDS, LABELS) == 0.7
    assert metrics.accuracy(torch.tensor(PREDS), torch.tensor(LABELS)) == 0.7
    assert metrics.accuracy([1, 0], [0, 0]) == 0.5 and isinstance(metrics.accuracy([0], [0]), float)


@pytest.mark.parametrize("preds, labels, shapes", [
    (np.zeros((2, 2)), np.zeros((2, 2)), "(2, 2) and (2, 2)"),  # not 1-D
    (np.zeros(3), np.zeros(2), "(3,) and (2,)"),
    (np.zeros(0), np.zeros(0), "(0,) and (0,)"),
])
def test_class_ids_must_be_non_empty_matching_1d(preds, labels, shapes):
    message = f"preds and labels must be non-empty 1-D arrays of the same length; got shapes {shapes}."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.accuracy(preds, labels)


def test_one_image_is_enough():
    assert metrics.accuracy([2], [2]) == 1.0
    assert metrics.per_class_report([0], [0], ["a"]).accuracy == 1.0


@pytest.mark.parametrize("preds, labels, what, low, high", [
    ([0, 3], [0, 1], "preds", 0, 3), ([0, 1], [-1, 1], "labels", -1, 1), ([0, 1], [0, 5], "labels", 0, 5),
])
def test_class_ids_out_of_range_name_the_range(preds, labels, what, low, high):
    message = (f"{what} must be class ids from 0 to 2, but range from {low} to {high}; check that the number of "
               "classes matches the model.")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.per_class_report(preds, labels, NAMES)


def test_the_extreme_class_ids_are_in_range():
    report = metrics.per_class_report([0, 2], [2, 0], NAMES)
    assert report.accuracy == 0.0 and [row.support for row in report.classes] == [1, 0, 1]


def test_top_k_accuracy_by_hand_with_ties_broken_towards_the_lower_class():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
    labels = np.array([1, 0, 1, 1])
    # top-1: 0, 2, 0 (tie 0/1: lower id), 2 -> none right; top-2: {0,1}, {2,1}, {0,1}, {2,0 (tie)} -> rows 0, 2
    assert metrics.top_k_accuracy(probs, labels, 1) == 0.0
    assert metrics.top_k_accuracy(probs, labels, 2) == 0.5
    assert metrics.top_k_accuracy(probs, labels, 3) == 1.0
    assert metrics.top_k_accuracy(torch.tensor(probs), torch.tensor(labels), 2) == 0.5


def test_top_k_ties_among_many_classes_go_to_the_lower_class_ids():
    row = np.array([3, 2, 2, 1, 1, 1, 1, 1, 1, 3, 2, 3, 2, 2, 3, 3, 2, 2, 2, 3], dtype=float)
    probs = (row / row.sum())[None]  # 20 classes, six tied at the top: classes 0 and 9 come first
    assert metrics.top_k_accuracy(probs, np.array([9]), 2) == 1.0
    assert metrics.top_k_accuracy(probs, np.array([14]), 2) == 0.0


@pytest.mark.parametrize("k", [0, 4])
def test_top_k_outside_one_to_the_class_count_is_refused(k):
    message = f"k={k} must be between 1 and the number of classes (3)."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.top_k_accuracy(np.full((2, 3), 1 / 3), np.array([0, 1]), k)


@pytest.mark.parametrize("scores, labels, shapes", [
    (np.zeros(3), np.zeros(3), "(3,) and (3,)"),
    (np.zeros((3, 2)), np.zeros(2), "(3, 2) and (2,)"),
    (np.zeros((0, 2)), np.zeros(0), "(0, 2) and (0,)"),
    (np.zeros((2, 2, 1)), np.zeros(2), "(2, 2, 1) and (2,)"),
])
def test_scores_must_be_n_by_c_with_n_labels(scores, labels, shapes):
    message = f"Expected scores of shape [N, C] and labels of shape [N] with N > 0; got {shapes}."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.top_k_accuracy(scores, labels, 1)


def test_labels_beyond_the_score_columns_are_refused():
    message = ("labels must be class ids from 0 to 1, but range from 0 to 2; check that the number of classes "
               "matches the model.")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.top_k_accuracy(np.full((2, 2), 0.5), np.array([0, 2]), 1)


def test_per_class_report_by_hand():
    report = metrics.per_class_report(PREDS, LABELS, NAMES)
    by_name = {row.name: (row.precision, row.recall, row.f1, row.support) for row in report.classes}
    assert by_name["a"] == pytest.approx((1.0, 0.75, 2 * 0.75 / 1.75, 4))
    assert by_name["b"] == pytest.approx((0.5, 1 / 3, 2 * 0.5 / 3 / (0.5 + 1 / 3), 3))
    assert by_name["c"] == pytest.approx((0.6, 1.0, 2 * 0.6 / 1.6, 3))
    assert [row.name for row in report.classes] == NAMES and all(type(row.support) is int for row in report.classes)
    f1 = [by_name[name][2] for name in NAMES]
    assert report.macro.name == "macro avg" and report.macro.support == 10
    assert (report.macro.precision, report.macro.recall, report.macro.f1) == pytest.approx(
        (0.7, (0.75 + 1 / 3 + 1) / 3, sum(f1) / 3))
    assert report.weighted.name == "weighted avg" and report.weighted.support == 10
    assert (report.weighted.precision, report.weighted.recall, report.weighted.f1) == pytest.approx(
        ((4 * 1.0 + 3 * 0.5 + 3 * 0.6) / 10, 0.7, (4 * f1[0] + 3 * f1[1] + 3 * f1[2]) / 10))
    assert report.accuracy == 0.7


def test_a_class_never_predicted_has_precision_zero_without_a_warning(recwarn):
    report = metrics.per_class_report([0, 0, 0], [0, 1, 1], ["a", "b", "missing"])
    assert [(r.precision, r.recall, r.support) for r in report.classes] == [(1 / 3, 1.0, 1), (0.0, 0.0, 2),
                                                                         (0.0, 0.0, 0)]
    assert not recwarn.list


def test_the_report_as_a_markdown_table():
    report = metrics.per_class_report(PREDS, LABELS, NAMES)
    table = report.to_markdown()
    assert table.splitlines() == [
        "| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|",
        "| a | 1.000 | 0.750 | 0.857 | 4 |", "| b | 0.500 | 0.333 | 0.400 | 3 |", "| c | 0.600 | 1.000 | 0.750 | 3 |",
        "| macro avg | 0.700 | 0.694 | 0.669 | 10 |", "| weighted avg | 0.730 | 0.700 | 0.688 | 10 |",
        "", "accuracy: 0.700"]
    assert report.to_markdown(digits=1).splitlines()[2] == "| a | 1.0 | 0.8 | 0.9 | 4 |"
    assert str(report) == table and report._repr_markdown_() == table


def test_confusion_matrix_has_true_classes_on_rows():
    cm = metrics.confusion_matrix(PREDS, LABELS, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 1, 2], [0, 0, 3]]
    assert metrics.confusion_matrix([0], [0], 3).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="preds must be class ids from 0 to 1"):
        metrics.confusion_matrix([2], [0], 2)


def test_most_confused_pairs_are_the_largest_mistakes_first_with_their_share():
    cm = np.array([[5, 2, 0, 1], [4, 6, 0, 0], [0, 4, 3, 1], [0, 0, 0, 9]])
    pairs = metrics.most_confused_pairs(cm, ["a", "b", "c", "d"], k=3)
    assert [(p.true_class, p.predicted_class, p.count) for p in pairs] == [("b", "a", 4), ("c", "b", 4),
                                                                             ("a", "b", 2)]
    assert [p.fraction for p in pairs] == pytest.approx([0.4, 0.5, 0.25])
    everything = metrics.most_confused_pairs(cm, ["a", "b", "c", "d"], k=20)
    assert len(everything) == 5 and all(p.count > 0 for p in everything)  # pairs never confused are left out
    assert metrics.most_confused_pairs(np.eye(2, dtype=int), ["a", "b"], k=1) == []
    assert len(metrics.most_confused_pairs(cm, ["a", "b", "c", "d"], k=1)) == 1


def test_most_confused_pairs_show_five_by_default_and_break_ties_row_by_row():
    cm = np.ones((5, 5), dtype=int) + 4 * np.eye(5, dtype=int)  # every mistake made once: 20 ties
    pairs = metrics.most_confused_pairs(cm, list("abcde"), k=20)
    assert [(p.true_class, p.predicted_class) for p in pairs] == [
        (t, p) for t in "abcde" for p in "abcde" if t != p]  # in reading order of the matrix
    assert len(metrics.most_confused_pairs(cm, list("abcde"))) == 5


def test_most_confused_pairs_refuse_a_bad_matrix_or_k():
    with pytest.raises(ValueError, match="^" + re.escape(
            "Expected a square confusion matrix with one row per class (3); got shape (2, 2).") + "$"):
        metrics.most_confused_pairs(np.eye(2), ["a", "b", "c"])
    message = "Expected a square confusion matrix with one row per class (3); got shape (3,)."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.most_confused_pairs(np.ones(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="^" + re.escape("k must be at least 1; got 0.") + "$"):
        metrics.most_confused_pairs(np.eye(2), ["a", "b"], k=0)


def test_bootstrap_interval_is_the_binomial_percentile_interval():
    correct = np.array([True] * 70 + [False] * 30)
    low, high = metrics.bootstrap_ci(correct, n_boot=4000, seed=1)
    draws = np.random.default_rng(1).binomial(100, 0.7, size=4000) / 100
    assert (low, high) == (np.quantile(draws, 0.025), np.quantile(draws, 0.975))
    assert 0.6 < low < 0.7 < high < 0.8 and isinstance(low, float)
    narrower = metrics.bootstrap_ci(correct, alpha=0.5, n_boot=4000, seed=1)
    assert low < narrower[0] < narrower[1] < high
    assert metrics.bootstrap_ci(correct, seed=1) == metrics.bootstrap_ci(correct, seed=1)
    many = np.arange(100_000) % 10 < 7  # fine enough that the seed and the number of draws show (2001 would not tie)
    draws = np.random.default_rng(0).binomial(100_000, 0.7, size=2000) / 100_000  # the defaults: 2000, seed 0, 95%
    assert metrics.bootstrap_ci(many) == (np.quantile(draws, 0.025), np.quantile(draws, 0.975))
    assert metrics.bootstrap_ci(many, seed=1) != metrics.bootstrap_ci(many, seed=2)
    assert metrics.bootstrap_ci(np.array([1, 0, 1, 1]), n_boot=1) == metrics.bootstrap_ci([True, False, True, True],
                                                                                          n_boot=1)


@pytest.mark.parametrize("correct", [np.array([0.5, 1.0]), np.array([]), np.ones((2, 2), dtype=bool)])
def test_bootstrap_refuses_what_is_not_a_list_of_outcomes(correct):
    message = "correct must be a non-empty 1-D array of booleans (or 0/1), e.g. Predictions.correct."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.bootstrap_ci(correct)


@pytest.mark.parametrize("options, message", [
    (dict(n_boot=0), "n_boot must be at least 1; got 0."),
    (dict(alpha=0.0), "alpha must be strictly between 0 and 1; got 0.0."),
    (dict(alpha=1.0), "alpha must be strictly between 0 and 1; got 1.0."),
])
def test_bootstrap_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        metrics.bootstrap_ci(np.array([True, False]), **options)


def test_most_confident_mistakes_are_the_wrong_ones_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.6, 0.4]])
    predictions = Predictions(logits=np.log(probs), probs=probs, labels=np.array([0, 0, 1, 1, 1, 1]),
                              preds=probs.argmax(1))
    # wrong: 1 (0.8), 2 (0.6), 4 (0.55), 5 (0.6, after 2 in a tie)
    assert metrics.most_confident_mistakes(predictions).tolist() == [1, 2, 5, 4]
    assert metrics.most_confident_mistakes(predictions, k=2).tolist() == [1, 2]
    assert metrics.most_confident_mistakes(predictions, k=1).tolist() == [1]
    with pytest.raises(ValueError, match="^" + re.escape("k must be at least 1; got 0.") + "$"):
        metrics.most_confident_mistakes(predictions, k=0)


def test_many_mistakes_tied_in_confidence_keep_their_order_and_eight_are_shown():
    top = np.where(np.arange(40) % 3 == 0, 0.9, 0.7)  # 40 mistakes, in two confidence levels
    probs = np.stack([top, 1 - top], axis=1)
    predictions = Predictions(logits=np.log(probs), probs=probs, labels=np.ones(40, dtype=int),
                              preds=np.zeros(40, dtype=int))
    order = metrics.most_confident_mistakes(predictions, k=40).tolist()
    assert order == list(range(0, 40, 3)) + [i for i in range(40) if i % 3]  # ties in dataset order
    assert metrics.most_confident_mistakes(predictions).tolist() == order[:8]


def eighty_and_ninety():
    """Model a right on the first 80 of 100 images; b also gets 12 of a's mistakes right and misses 2 that a gets."""
    a = np.array([1] * 80 + [0] * 20, dtype=bool)
    b = a.copy()
    b[80:92], b[:2] = True, False
    return a, b


def test_paired_comparison_counts_disagreements_and_tests_them():
    a, b = eighty_and_ninety()
    result = metrics.paired_comparison(a, b)
    assert (result.only_a_right, result.only_b_right) == (2, 12)
    assert result.difference == pytest.approx(0.10)
    assert result.p_value == pytest.approx(0.012939453125)  # exact two-sided binomial, 2 of 14
    low, high = result.interval
    assert 0 < low < 0.10 < high
    same = metrics.paired_comparison(a, a)
    assert same.p_value == 1.0 and same.interval == (0.0, 0.0)
    with pytest.raises(ValueError, match="same length"):
        metrics.paired_comparison(a, b[:-1])


def paired_interval_by_hand(n, only_a, only_b, n_boot, alpha, seed):
    """The paired bootstrap interval: n image pairs resampled = one multinomial draw over (only a, only b, the rest)."""
    draws = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], n_boot)
    gains = (draws[:, 1] - draws[:, 0]) / n  # images only b gets right minus images only a gets right
    return float(np.quantile(gains, alpha / 2)), float(np.quantile(gains, 1 - alpha / 2))


def disagreeing(n, only_a, only_b):
    """Two models' outcomes on n images: both right on the first half of the rest, then only a, then only b."""
    a, b = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    both = (n - only_a - only_b) // 2
    a[:both] = b[:both] = True
    a[both:both + only_a] = True
    b[both + only_a:both + only_a + only_b] = True
    return a, b


def test_paired_comparison_by_default_is_the_2000_draw_seed_0_interval_and_the_exact_mcnemar_test():
    from scipy.stats import binomtest

    a, b = disagreeing(100_000, 5000, 6000)  # many images: neighbouring quantiles differ, so the draw count shows
    result = metrics.paired_comparison(a, b)
    assert (result.only_a_right, result.only_b_right) == (5000, 6000)
    assert (result.accuracy_a, result.accuracy_b) == (a.mean(), b.mean())
    assert result.p_value == binomtest(6000, 11000, 0.5).pvalue
    assert result.interval == paired_interval_by_hand(100_000, 5000, 6000, n_boot=2000, alpha=0.05, seed=0)
    assert result.interval != paired_interval_by_hand(100_000, 5000, 6000, n_boot=2001, alpha=0.05, seed=0)
    assert metrics.paired_comparison(a, b, seed=3).interval == paired_interval_by_hand(
        100_000, 5000, 6000, n_boot=2000, alpha=0.05, seed=3)
    assert metrics.paired_comparison(a, b, seed=3) == metrics.paired_comparison(a, b, seed=3)


@pytest.mark.parametrize("n, only_a, only_b, n_boot, alpha, seed", [
    (100, 2, 12, 2000, 0.05, 0),  # the first test's models
    (1000, 30, 70, 2000, 0.05, 0),
    (1000, 70, 30, 500, 0.2, 7),  # b worse: a negative interval
    (400, 10, 30, 3000, 0.1, 1),
])
def test_paired_interval_is_the_percentile_interval_of_multinomial_draws(n, only_a, only_b, n_boot, alpha, seed):
    a, b = disagreeing(n, only_a, only_b)
    low, high = metrics.paired_comparison(a, b, n_boot=n_boot, alpha=alpha, seed=seed).interval
    assert (low, high) == paired_interval_by_hand(n, only_a, only_b, n_boot, alpha, seed)
    assert low <= (only_b - only_a) / n <= high


def test_the_multinomial_draws_are_the_bootstrap_of_image_pairs():
    a, b = disagreeing(200, 6, 20)
    rng = np.random.default_rng(5)
    picks = rng.integers(0, 200, size=(20000, 200))  # resample images, both models' outcomes together
    gains = (b[picks].astype(int) - a[picks]).mean(axis=1)
    low, high = metrics.paired_comparison(a, b, n_boot=20000).interval
    assert low == pytest.approx(np.quantile(gains, 0.025), abs=0.006)
    assert high == pytest.approx(np.quantile(gains, 0.975), abs=0.006)


def test_paired_comparison_of_one_image():
    assert metrics.paired_comparison([True], [False]) == metrics.PairedComparison(
        accuracy_a=1.0, accuracy_b=0.0, only_a_right=1, only_b_right=0, p_value=1.0, interval=(-1.0, -1.0))


def test_paired_comparison_with_as_many_disagreements_each_way_is_a_coin_toss():
    a, b = disagreeing(100, 7, 7)
    result = metrics.paired_comparison(a, b)
    assert (result.only_a_right, result.only_b_right, result.p_value, result.difference) == (7, 7, 1.0, 0.0)


PAIRED_SENTENCE = ("correct_a and correct_b must be 1-D booleans of the same length, one per test image in the same order "
                   "(Predictions.correct of each model).")


@pytest.mark.parametrize("a, b", [
    ([0, 2, 1], [0, 1, 1]),  # a is not booleans, b is
    ([0, 1, 1], [0, 1, 2]),  # b is not booleans, a is
    ([0.5, 1.0], [1.0, 1.0]),
    ([], []),
    ([[1, 0]], [[1, 0]]),  # not 1-D
    ([1, 0, 1], [1, 0]),  # not the same length
])
def test_paired_comparison_refuses_what_is_not_two_matching_lists_of_outcomes(a, b):
    with pytest.raises(ValueError, match=f"^{re.escape(PAIRED_SENTENCE)}$"):
        metrics.paired_comparison(np.array(a), np.array(b))


@pytest.mark.parametrize("alpha", [0, 1, 1.5])
def test_paired_comparison_refuses_an_alpha_outside_zero_to_one(alpha):
    with pytest.raises(ValueError, match=f"^{re.escape(f'alpha must be strictly between 0 and 1; got {alpha!r}.')}$"):
        metrics.paired_comparison([True, False], [True, True], alpha=alpha)


def test_a_paired_comparison_prints_as_one_sentence():
    gain = metrics.PairedComparison(0.7, 0.9, 3, 23, 0.00012345, (0.12, 0.28))
    assert str(gain) == ("70.0% -> 90.0% (+20.0 points, 95% interval [+12.0, +28.0]); they disagree on 26 images "
                         "(23 only b gets right, 3 only a); McNemar p = 0.000123")
    loss = metrics.PairedComparison(0.9, 0.7, 23, 3, 0.5, (-0.28, -0.12))
    assert str(loss) == ("90.0% -> 70.0% (-20.0 points, 95% interval [-28.0, -12.0]); they disagree on 26 images "
                         "(3 only b gets right, 23 only a); McNemar p = 0.5")
    assert str(metrics.paired_comparison(*eighty_and_ninety())) == (
        "80.0% -> 90.0% (+10.0 points, 95% interval [+3.0, +18.0]); they disagree on 14 images "
        "(12 only b gets right, 2 only a); McNemar p = 0.0129")
