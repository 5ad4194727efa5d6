"""Tests for helpers.evaluate on hand-computed cases and tiny models built here."""

import re
import sys

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter
from scipy.special import softmax
from torchvision import tv_tensors
from transformers import ViTConfig, ViTForImageClassification

from helpers import attention, export, models, profiles, train
from helpers import evaluate as ev
from helpers.attention import attention_rollout
from helpers.data import ImageSpec, TensorImages, eval_transform
from helpers.lessons import l06_evaluation as l06

NUM_CLASSES = 3


class PooledLinear(torch.nn.Module):
    """Global average pooling then a linear layer: invariant to horizontal flips."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, NUM_CLASSES)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, images):
        return self.head(self.dropout(images.mean(dim=(-2, -1))))


class LeftRightSensitive(torch.nn.Module):
    """Scores depend on which image half is brighter, so flips change them."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, NUM_CLASSES)

    def forward(self, images):
        width = images.shape[-1]
        halves = torch.stack([images[..., : width // 2].mean((1, 2, 3)), images[..., width // 2 :].mean((1, 2, 3))], 1)
        return self.head(halves)


class Recorder(torch.nn.Module):
    """Records every batch it sees and returns constant logits."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.5, -0.5, 0.0]))
        self.seen = []

    def forward(self, images):
        self.seen.append(images.clone())
        return self.bias.repeat(len(images), 1)


def labeled(images):
    return TensorImages(images, [i % NUM_CLASSES for i in range(len(images))], ["a", "b", "c"])


def float_images(count=10, size=8, seed=0):
    return labeled(torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def tiny_vit(**config_overrides):
    torch.manual_seed(0)
    config = dict(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=NUM_CLASSES,
    )
    return ViTForImageClassification(ViTConfig(**{**config, **config_overrides}))


# ---------------------------------------------------------------------------- predict


def test_predict_vit_matches_a_direct_forward_pass_and_restores_modes():
    model, dataset = tiny_vit(), float_images(count=10)
    model.train()
    model.vit.embeddings.eval()  # a submodule in another mode must keep it
    predictions = ev.predict(model, dataset, batch_size=4, progress=False)

    assert model.training and not model.vit.embeddings.training
    model.eval()
    with torch.no_grad():
        expected = model(dataset.images).logits.numpy()
    np.testing.assert_allclose(predictions.logits, expected, atol=1e-5)
    np.testing.assert_allclose(predictions.probs, softmax(expected, axis=1), atol=1e-5)
    np.testing.assert_array_equal(predictions.labels, dataset.labels)
    np.testing.assert_array_equal(predictions.preds, expected.argmax(1))
    np.testing.assert_array_equal(predictions.correct, expected.argmax(1) == np.array(dataset.labels))


def test_predict_plain_module_runs_in_eval_mode():
    model, dataset = PooledLinear(), float_images()
    model.train()
    first = ev.predict(model, dataset, progress=False)
    second = ev.predict(model, dataset, progress=False)
    np.testing.assert_array_equal(first.logits, second.logits)  # dropout was off
    assert model.training


def test_predict_rejects_uint8_images_empty_data_and_unknown_tta():
    uint8_set = labeled(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="eval transform"):
        ev.predict(PooledLinear(), uint8_set, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ev.predict(PooledLinear(), labeled(torch.zeros(0, 3, 8, 8)), progress=False)
    with pytest.raises(ValueError, match="tta"):
        ev.predict(PooledLinear(), float_images(), tta="rotate", progress=False)


def test_flip_tta_leaves_a_flip_invariant_model_unchanged():
    model, dataset = PooledLinear(), float_images()
    plain = ev.predict(model, dataset, progress=False)
    flipped = ev.predict(model, dataset, tta="flip", progress=False)
    np.testing.assert_allclose(flipped.probs, plain.probs, atol=1e-6)
    np.testing.assert_array_equal(flipped.preds, plain.preds)


def test_flip_tta_averages_probabilities_of_image_and_mirror():
    torch.manual_seed(0)
    model, dataset = LeftRightSensitive(), float_images()
    images = dataset.images
    with torch.no_grad():
        expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)).numpy() / 2
    predictions = ev.predict(model, dataset, tta="flip", progress=False)
    np.testing.assert_allclose(predictions.probs, expected, atol=1e-6)
    np.testing.assert_allclose(softmax(predictions.logits, axis=1), expected, atol=1e-6)
    assert not np.allclose(expected, ev.predict(model, dataset, progress=False).probs)


def test_flip_crops_tta_sees_flips_and_four_shifted_copies():
    model, dataset = Recorder(), float_images(count=2, size=16)
    predictions = ev.predict(model, dataset, tta="flip+crops", progress=False)
    np.testing.assert_allclose(predictions.probs[0], softmax([0.5, -0.5, 0.0]), atol=1e-6)

    assert len(model.seen) == 10
    images, shift = dataset.images, 1  # 16 px / 16
    for image in (images, images.flip(-1)):
        assert any(torch.equal(view, image) for view in model.seen)
        assert any(torch.equal(view[..., shift:, :], image[..., :-shift, :]) for view in model.seen)  # down
        assert any(torch.equal(view[..., :-shift, :], image[..., shift:, :]) for view in model.seen)  # up
        assert any(torch.equal(view[..., shift:], image[..., :-shift]) for view in model.seen)  # right
        assert any(torch.equal(view[..., :-shift], image[..., shift:]) for view in model.seen)  # left


def test_crops_tta_sees_the_image_and_four_shifted_copies_without_flips():
    model, dataset = Recorder(), float_images(count=2, size=16)
    ev.predict(model, dataset, tta="crops", progress=False)
    assert len(model.seen) == ev.TTA_VIEWS["crops"] == 5
    images = dataset.images
    assert torch.equal(model.seen[0], images)
    assert not any(torch.equal(view, images.flip(-1)) for view in model.seen)
    assert sum(torch.equal(view[..., 1:], images[..., :-1]) for view in model.seen) == 1  # shifted right


def test_compare_tta_measures_each_mode_against_plain_predictions():
    torch.manual_seed(0)
    model, dataset = LeftRightSensitive(), float_images(count=12)
    results = l06.compare_tta(model, dataset, batch_size=4, progress=False)
    assert [row.mode for row in results] == ["none", *ev.TTA_MODES]
    assert [row.views for row in results] == [1, 2, 5, 10]
    for row, mode in zip(results, (None, *ev.TTA_MODES)):
        expected = ev.predict(model, dataset, tta=mode, progress=False)
        np.testing.assert_allclose(row.predictions.probs, expected.probs, atol=1e-6)
        assert row.accuracy == ev.accuracy(expected.preds, expected.labels) and row.seconds > 0
    table = l06.tta_table(results)
    assert table.count("\n") == 1 + len(results) and "| none | 1 |" in table and "| +0.00 |" in table
    with pytest.raises(ValueError, match="at least one"):
        l06.tta_table([])


# ---------------------------------------------------------------------------- metrics


def test_accuracy_perfect_all_wrong_and_partial():
    labels = np.array([0, 1, 2, 2])
    assert ev.accuracy(labels, labels) == 1.0
    assert ev.accuracy((labels + 1) % 3, labels) == 0.0
    assert ev.accuracy(torch.tensor([0, 1, 0, 0]), torch.tensor(labels)) == 0.5
    with pytest.raises(ValueError, match="same length"):
        ev.accuracy([0, 1], [0, 1, 2])


def test_top_k_accuracy_hand_case():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.7, 0.2, 0.1]])
    labels = np.array([0, 2, 1, 2])
    assert ev.top_k_accuracy(probs, labels, k=1) == 0.5
    assert ev.top_k_accuracy(probs, labels, k=2) == 0.75
    assert ev.top_k_accuracy(probs, labels, k=3) == 1.0
    with pytest.raises(ValueError, match="number of classes"):
        ev.top_k_accuracy(probs, labels, k=4)
    with pytest.raises(ValueError, match="class ids"):
        ev.top_k_accuracy(probs, np.array([0, 1, 2, 3]), k=1)


def test_per_class_report_with_a_class_never_predicted():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 1, 1, 1]  # class 2 is never predicted
    report = ev.per_class_report(preds, labels, ["cat", "dog", "owl"])
    cat, dog, owl = report.classes
    assert (cat.precision, cat.recall, cat.f1, cat.support) == (1.0, 1.0, 1.0, 2)
    assert (dog.precision, dog.recall, dog.support) == (0.5, 1.0, 2)
    assert dog.f1 == pytest.approx(2 / 3)
    assert (owl.precision, owl.recall, owl.f1, owl.support) == (0.0, 0.0, 0.0, 2)
    assert report.macro.precision == pytest.approx(0.5)
    assert report.macro.recall == pytest.approx(2 / 3)
    assert report.macro.f1 == pytest.approx((1 + 2 / 3) / 3)
    assert report.weighted.support == 6
    assert report.accuracy == pytest.approx(4 / 6)

    table = report.to_markdown()
    assert str(report) == table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + 3 + 2
    assert "| owl | 0.000 | 0.000 | 0.000 | 2 |" in table


def test_per_class_report_perfect_and_all_wrong():
    labels = [0, 1, 2, 0]
    perfect = ev.per_class_report(labels, labels, ["a", "b", "c"])
    assert all((row.precision, row.recall, row.f1) == (1.0, 1.0, 1.0) for row in perfect.classes)
    wrong = ev.per_class_report([1, 2, 0, 1], labels, ["a", "b", "c"])
    assert all((row.precision, row.recall, row.f1) == (0.0, 0.0, 0.0) for row in wrong.classes)
    assert wrong.macro.f1 == 0.0 and wrong.accuracy == 0.0
    with pytest.raises(ValueError, match="class ids"):
        ev.per_class_report([0, 3], [0, 1], ["a", "b", "c"])


def test_confusion_matrix_and_most_confused_pairs():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 1, 1, 1, 0, 2, 2, 1]
    cm = ev.confusion_matrix(preds, labels, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 2, 0], [0, 2, 0], [1, 1, 2]])

    pairs = ev.most_confused_pairs(cm, ["cat", "dog", "owl"], k=5)
    assert [(p.true_class, p.predicted_class, p.count) for p in pairs] == [
        ("cat", "dog", 2),
        ("owl", "cat", 1),
        ("owl", "dog", 1),
    ]
    assert pairs[0].fraction == pytest.approx(2 / 3)
    assert len(ev.most_confused_pairs(cm, ["cat", "dog", "owl"], k=1)) == 1
    assert ev.most_confused_pairs(np.eye(3, dtype=int), ["cat", "dog", "owl"]) == []
    with pytest.raises(ValueError, match="square confusion matrix"):
        ev.most_confused_pairs(cm, ["cat", "dog"])
    with pytest.raises(ValueError, match="class ids"):
        ev.confusion_matrix([0, 5], [0, 1], num_classes=3)


CASES = {  # labels [0, 0, 1, 1, 2, 2]; predictions by case
    "perfect": [0, 0, 1, 1, 2, 2],
    "all wrong": [1, 2, 2, 0, 0, 1],
    "class 2 never predicted": [0, 0, 1, 1, 1, 0],
}


@pytest.mark.parametrize("case", CASES)
def test_every_metric_on_perfect_all_wrong_and_missing_class_predictions(case):
    labels, preds = np.array([0, 0, 1, 1, 2, 2]), np.array(CASES[case])
    hits = int((preds == labels).sum())  # 6, 0 and 4 by construction
    one_hot = np.eye(3)[preds]
    assert ev.accuracy(preds, labels) == pytest.approx(hits / 6)
    assert ev.top_k_accuracy(one_hot, labels, k=1) == pytest.approx(hits / 6)
    assert ev.top_k_accuracy(one_hot, labels, k=3) == 1.0
    cm = ev.confusion_matrix(preds, labels, num_classes=3)
    assert np.trace(cm) == hits and cm.sum(axis=1).tolist() == [2, 2, 2]
    assert cm.sum(axis=0).tolist() == np.bincount(preds, minlength=3).tolist()
    report = ev.per_class_report(preds, labels, ["a", "b", "c"])
    assert [row.recall for row in report.classes] == pytest.approx(np.diag(cm) / 2)
    assert report.accuracy == pytest.approx(hits / 6)
    pairs = ev.most_confused_pairs(cm, ["a", "b", "c"], k=9)
    assert sum(pair.count for pair in pairs) == 6 - hits
    assert ev.expected_calibration_error(one_hot, labels) == pytest.approx(1 - hits / 6)  # always 100% sure
    if case == "class 2 never predicted":
        assert cm[:, 2].sum() == 0 and report.classes[2].precision == 0.0


# ---------------------------------------------------------------------------- calibration


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # 80% confident, 80% right
    assert ev.expected_calibration_error(probs, labels) == pytest.approx(0, abs=1e-12)
    bins = ev.reliability_bins(probs, labels, n_bins=5)
    assert bins.counts.tolist() == [0, 0, 0, 10, 0]
    assert bins.accuracy[3] == pytest.approx(0.8) and np.isnan(bins.accuracy[0])


def test_ece_extremes_and_range():
    one_hot = np.eye(3)[[0, 1, 2, 0]]
    assert ev.expected_calibration_error(one_hot, [0, 1, 2, 0]) == 0.0
    assert ev.expected_calibration_error(one_hot, [1, 2, 0, 1]) == 1.0  # sure and always wrong
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(200, 5)) * 3, axis=1)
    ece = ev.expected_calibration_error(probs, rng.integers(0, 5, 200))
    assert 0 < ece < 1
    assert ev.reliability_bins(probs, rng.integers(0, 5, 200)).counts.sum() == 200


def test_calibration_rejects_logits():
    with pytest.raises(ValueError, match="not logits"):
        ev.expected_calibration_error(np.array([[2.0, -1.0]]), [0])


def _overconfident_logits(scale, count=2000, seed=0):
    """Labels drawn from softmax(z), logits reported as scale * z: the ideal temperature is `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(count, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in softmax(z, axis=1)])
    return z * scale, labels


def test_fit_temperature_recovers_the_scale_and_lowers_nll():
    logits, labels = _overconfident_logits(scale=3.0)
    temperature = ev.fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert ev.negative_log_likelihood(logits, labels, temperature) < ev.negative_log_likelihood(logits, labels)
    calibrated = ev.apply_temperature(logits, temperature)
    assert ev.expected_calibration_error(calibrated, labels) < ev.expected_calibration_error(
        softmax(logits, axis=1), labels
    )


@pytest.mark.parametrize("scale", [0.3, 1.0, 5.0])
def test_fit_temperature_never_increases_nll_on_the_fitting_set(scale):
    logits, labels = _overconfident_logits(scale, count=300, seed=1)
    temperature = ev.fit_temperature(logits, labels)
    assert temperature > 0
    assert ev.negative_log_likelihood(logits, labels, temperature) <= ev.negative_log_likelihood(logits, labels)


def test_apply_temperature():
    logits = np.array([[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(ev.apply_temperature(logits, 1.0), softmax(logits, axis=1))
    assert ev.apply_temperature(logits, 4.0).max() < softmax(logits, axis=1).max()
    with pytest.raises(ValueError, match="positive"):
        ev.apply_temperature(logits, 0.0)


# ---------------------------------------------------------------------------- robustness


def test_corrupt_keeps_dtype_shape_and_type():
    rng = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=rng)
    for kind in l06.CORRUPTIONS:
        out = l06.corrupt(uint8, kind, 3, seed=0)
        assert out.dtype == torch.uint8 and out.shape == uint8.shape
        floats = l06.corrupt(uint8[0].float() / 255, kind, 3, seed=0)
        assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    image = tv_tensors.Image(uint8[0])
    assert isinstance(l06.corrupt(image, "gaussian_blur", 1), tv_tensors.Image)


@pytest.mark.parametrize("kind", l06.CORRUPTIONS)
def test_corruption_grows_with_severity(kind):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.6
    changes = [(l06.corrupt(image, kind, s, seed=0) - image).abs().mean().item() for s in l06.SEVERITIES]
    assert all(a < b for a, b in zip(changes, changes[1:]))
    assert changes[0] > 0


def test_noise_is_reproducible_with_a_seed():
    image = torch.full((3, 8, 8), 0.5)
    first, again, other = (l06.corrupt(image, "gaussian_noise", 5, seed=seed) for seed in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize(("side", "severity", "sigma"), [(32, 5, 1.0), (64, 2, 1.2)])
def test_blur_matches_scipy_with_sigma_scaled_to_the_image(side, severity, sigma):
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    expected = gaussian_filter(image.numpy(), sigma=(0, sigma, sigma), mode="mirror", truncate=4)
    np.testing.assert_allclose(l06.corrupt(image, "gaussian_blur", severity).numpy(), expected, atol=1e-4)


def test_brightness_matches_an_hsv_round_trip():
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    image[:, 0, 0] = 0  # a black pixel turns grey
    hsv = rgb_to_hsv(image.permute(1, 2, 0).numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    expected = hsv_to_rgb(hsv).transpose(2, 0, 1)
    np.testing.assert_allclose(l06.corrupt(image, "brightness", 5).numpy(), expected, atol=1e-5)


def test_corrupt_rejects_bad_input():
    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="Unknown corruption"):
        l06.corrupt(image, "fog", 1)
    for severity in (0, 6, 2.5):
        with pytest.raises(ValueError, match="severity"):
            l06.corrupt(image, "brightness", severity)
    with pytest.raises(ValueError, match="before the model's Normalize"):
        l06.corrupt(image * 2 - 1, "brightness", 1)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        l06.corrupt(torch.rand(8, 8), "brightness", 1)


def test_robustness_sweep_reports_clean_and_each_severity():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = eval_transform(ImageSpec((8, 8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    model = Recorder()  # always predicts class 0: 2 of the 6 labels
    results = l06.robustness_sweep(model, labeled(images), transform, severities=(1, 5), progress=False)
    assert list(results) == list(l06.CORRUPTIONS)
    for by_severity in results.values():
        assert by_severity == {0: pytest.approx(2 / 6), 1: pytest.approx(2 / 6), 5: pytest.approx(2 / 6)}
    clean = model.seen[0]
    assert clean.min() >= -1 and clean.max() <= 1  # normalised by the eval transform
    assert not torch.equal(clean, model.seen[1])  # the first corruption changed the images
    with pytest.raises(ValueError, match="Unknown corruption"):
        l06.robustness_sweep(model, labeled(images), transform, kinds=("snow",))


def test_robustness_sweep_noise_is_reproducible_with_a_seed():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = eval_transform(ImageSpec((8, 8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))

    def noisy_batches(seed):
        model = Recorder()
        l06.robustness_sweep(model, labeled(images), transform, ("gaussian_noise",), (5,), progress=False, seed=seed)
        return model.seen[1]

    first = noisy_batches(seed=7)
    torch.rand(5)  # the global generator moves on; the sweep's noise does not
    assert torch.equal(noisy_batches(seed=7), first)
    assert not torch.equal(noisy_batches(seed=8), first)


# ---------------------------------------------------------------------------- uncertainty


def test_bootstrap_interval_contains_the_accuracy_and_narrows_with_data():
    correct = np.array([True] * 70 + [False] * 30)
    low, high = ev.bootstrap_ci(correct)
    assert low < 0.7 < high
    big_low, big_high = ev.bootstrap_ci(np.tile(correct, 20))
    assert big_high - big_low < (high - low) / 3
    assert ev.bootstrap_ci(np.ones(5, dtype=bool)) == (1.0, 1.0)
    assert ev.bootstrap_ci(correct, seed=3) == ev.bootstrap_ci(correct, seed=3)


def test_bootstrap_rejects_non_boolean_input():
    with pytest.raises(ValueError, match="booleans"):
        ev.bootstrap_ci(np.array([0.2, 0.9]))
    with pytest.raises(ValueError, match="alpha"):
        ev.bootstrap_ci(np.ones(4, dtype=bool), alpha=1.5)


def test_samples_needed_gives_the_requested_power():
    acc_a, acc_b = 0.80, 0.85
    n = l06.samples_needed(acc_a, acc_b)
    rng = np.random.default_rng(0)
    hits_a = rng.binomial(n, acc_a, size=4000) / n
    hits_b = rng.binomial(n, acc_b, size=4000) / n
    pooled = (hits_a + hits_b) / 2
    z = (hits_b - hits_a) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert np.mean(np.abs(z) > 1.96) == pytest.approx(0.8, abs=0.03)
    assert l06.samples_needed(0.80, 0.90) < n < l06.samples_needed(0.80, 0.82)
    assert l06.samples_needed(0.80, 0.85, power=0.9) > n


def test_samples_needed_rejects_bad_input():
    with pytest.raises(ValueError, match="equal"):
        l06.samples_needed(0.9, 0.9)
    with pytest.raises(ValueError, match="acc_b"):
        l06.samples_needed(0.9, 90)
    with pytest.raises(ValueError, match="power"):
        l06.samples_needed(0.8, 0.9, power=1.0)


# ---------------------------------------------------------------------------- figures


def test_plot_confusion_matrix_normalizes_rows():
    cm = np.array([[3, 1], [0, 0]])
    fig = ev.plot_confusion_matrix(cm, ["a", "b"], normalize=True)
    assert isinstance(fig, Figure)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, [[0.75, 0.25], [0, 0]])
    counts = ev.plot_confusion_matrix(cm, ["a", "b"]).axes[0].images[0].get_array()
    np.testing.assert_array_equal(counts, cm)


def test_plot_reliability_and_robustness():
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    fig = ev.plot_reliability(probs, labels)
    assert isinstance(fig, Figure) and "ECE = 0.00%" in fig.axes[0].get_title()

    results = {"gaussian_noise": {0: 0.9, 1: 0.8, 2: 0.6}, "brightness": {0: 0.9, 1: 0.88, 2: 0.85}}
    lines = l06.plot_robustness(results).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["gaussian_noise", "brightness"]
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.9, 0.8, 0.6])
    with pytest.raises(ValueError, match="got none"):
        l06.plot_robustness({})


def test_plot_error_gallery_shows_images_above_their_overlays():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = labeled(images)  # labels 0, 1, 2, 0
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    predictions = ev.Predictions(np.log(probs + 1e-9), probs, np.array(dataset.labels), probs.argmax(1))
    fig = ev.plot_error_gallery(dataset, predictions, [0, 2], torch.rand(2, 2, 2))
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.axes[0].get_title() == "a -> b\n(90%)"
    assert fig.axes[1].get_title() == "c -> a\n(60%)"
    with pytest.raises(ValueError, match="one map per index"):
        ev.plot_error_gallery(dataset, predictions, [0, 2], torch.rand(1, 2, 2))


# ---------------------------------------------------------------------------- error analysis


def test_most_confident_mistakes_are_wrong_and_sorted_by_confidence():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1, 1])  # wrong: 1 (0.7), 2 (0.6), 4 (0.55)
    predictions = ev.Predictions(np.log(probs), probs, labels, probs.argmax(1))
    assert ev.most_confident_mistakes(predictions, k=2).tolist() == [1, 2]
    assert ev.most_confident_mistakes(predictions, k=10).tolist() == [1, 2, 4]
    perfect = ev.Predictions(np.log(probs), probs, probs.argmax(1), probs.argmax(1))
    assert ev.most_confident_mistakes(perfect).tolist() == []
    with pytest.raises(ValueError, match="at least 1"):
        ev.most_confident_mistakes(predictions, k=0)


def test_rollout_maps_match_attention_rollout_of_each_image():
    model = tiny_vit(image_size=8, patch_size=2, num_hidden_layers=2, attn_implementation="eager")
    model.train()
    dataset = float_images(count=5)
    maps = attention.rollout_maps(model, dataset, [3, 1])
    assert maps.shape == (2, 4, 4) and model.training
    model.eval()
    for position, index in enumerate([3, 1]):
        with torch.no_grad():
            attentions = model(dataset.images[[index]], output_attentions=True).attentions
        torch.testing.assert_close(maps[position], attention_rollout(attentions, grid=(4, 4)))
    assert not torch.allclose(maps[0], maps[1])


def test_rollout_maps_explain_what_they_need():
    with pytest.raises(ValueError, match="eager"):
        attention.rollout_maps(tiny_vit(attn_implementation="sdpa"), float_images(), [0])
    with pytest.raises(ValueError, match="patch_size"):
        attention.rollout_maps(PooledLinear(), float_images(), [0])
    with pytest.raises(ValueError, match="no indices"):
        attention.rollout_maps(tiny_vit(attn_implementation="eager"), float_images(), [])


# ---------------------------------------------------------------------------- cached fine-tune


def small_settings(model_dir, **overrides):
    values = dict(model_name=str(model_dir), train_size=30, eval_size=20, batch_size=16)
    return profiles.resolve("smoke", **{**values, **overrides})


def test_finetune_key_follows_training_settings_and_model_files(tiny_model_dir):
    settings = small_settings(tiny_model_dir)
    key = train.finetune_key(settings)
    same_training = profiles.Settings(**{**vars(settings), "profile": "cpu", "num_workers": 2, "reason": "other"})
    assert train.finetune_key(same_training) == key
    assert train.finetune_key(small_settings(tiny_model_dir, lr=5e-4)) != key
    assert train.finetune_key(small_settings(tiny_model_dir, train_size=40)) != key
    with open(tiny_model_dir / "config.json", "a") as file:
        file.write("\n")
    assert train.finetune_key(settings) != key


def test_finetuned_trains_once_then_reuses_the_cache(tiny_model_dir, tmp_path):
    settings, cache = small_settings(tiny_model_dir), tmp_path / "cache"
    first = train.finetuned(settings, cache_dir=cache, progress=False)
    assert not first.reused and first.folder.parent == cache
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "history.json", "settings.json"} <= {
        path.name for path in first.folder.iterdir()
    }
    assert len(first.history) == settings.epochs and len(first.splits.test) == 20
    assert not first.model.training
    untrained, _ = models.load_model(str(tiny_model_dir), first.splits.classes)
    original = ev.predict(untrained, first.splits.test, progress=False)

    second = train.finetuned(settings, cache_dir=cache, attn_implementation="eager", progress=False)
    assert second.reused and second.folder == first.folder and second.history.rows == first.history.rows
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name])
    trained = ev.predict(second.model, second.splits.test, progress=False)
    assert not np.allclose(trained.logits, original.logits)  # the cached weights are the trained ones
    images = second.splits.test[0][0][None]
    assert len(second.model(images, output_attentions=True).attentions) == second.model.config.num_hidden_layers
    assert [path.name for path in cache.iterdir()] == [first.folder.name]  # no staging folder left


# ---------------------------------------------------------------------------- shipping


def test_pipeline_from_saved_folder_agrees_with_classify_file(tiny_model_dir, tmp_path):
    from PIL import Image
    from transformers import pipeline

    classes = [f"class {i}" for i in range(10)]
    model, processor = models.load_model(str(tiny_model_dir), classes)
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # a clear winner, so top-1 does not hinge on rounding
    model.save_pretrained(tmp_path / "shipped")
    processor.save_pretrained(tmp_path / "shipped")
    classify = pipeline("image-classification", model=str(tmp_path / "shipped"), device="cpu")
    transform = eval_transform(ImageSpec.from_processor(processor))
    for seed in range(3):
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        path = tmp_path / f"image{seed}.png"
        Image.fromarray(pixels.numpy()).save(path)
        label, probability = export.classify_file(model, path, transform)
        best = classify(str(path), top_k=1)[0]
        assert label in classes and best["label"] == label
        assert best["score"] == pytest.approx(probability, abs=1e-4)


def test_throughput_reports_each_batch_size_and_restores_mode():
    model = tiny_vit()
    model.train()
    speeds = export.throughput(model, (8, 8), batch_sizes=(1, 4), min_seconds=0.01)
    assert list(speeds) == [1, 4] and all(speed > 0 for speed in speeds.values())
    assert model.training
    with pytest.raises(ValueError, match="precision"):
        export.throughput(model, (8, 8), precision="int8")
    with pytest.raises(ValueError, match="batch_sizes"):
        export.throughput(model, (8, 8), batch_sizes=(0,))


def test_size_on_disk_adds_up_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "b.json").write_bytes(b"y" * 23)
    assert export.size_on_disk(tmp_path) == 123
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        export.size_on_disk(tmp_path / "missing")


def test_onnx_export_runs_in_onnxruntime_for_any_batch_size_and_matches_pytorch(tmp_path, capfd):
    import onnx  # pinned in the dev extra: the export is tested for real

    model, images = tiny_vit(), torch.randn(3, 3, 8, 8)
    path = export.export_onnx(model, tmp_path / "model.onnx", images[:2])
    assert "[torch.onnx]" not in capfd.readouterr().out  # quiet in a notebook's saved output
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # the batch is not fixed
    assert export.onnx_max_difference(path, model, images) < 1e-4  # a batch size other than the example's


def test_onnx_export_without_the_packages_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    assert not export.onnx_available()
    with pytest.raises(ModuleNotFoundError, match="^" + re.escape(
            "ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript onnxruntime.") + "$"):
        export.export_onnx(tiny_vit(), tmp_path / "model.onnx", torch.randn(1, 3, 8, 8))


