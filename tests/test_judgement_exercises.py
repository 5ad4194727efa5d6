"""The exercises that ask for judgement, one per lesson: each checker accepts the right answer and turns down the
plausible wrong ones with a hint (never the expected value)."""
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, freezing, profiles, train
from helpers.lessons import l00_setup as l00
from helpers.lessons import l01_vit_theory as l01
from helpers.lessons import l02_freezing as l02
from helpers.lessons import l03_datasets as l03
from helpers.lessons import l04_augmentation as l04
from helpers.lessons import l05_training as l05
from helpers.lessons import l06_evaluation as l06


def test_00_standard_error_of_the_test_accuracy(not_yet, capsys):
    assert l00.check_standard_error(math.sqrt(0.97 * 0.03 / 270), 0.97, 270) is True
    assert "sqrt" in not_yet(l00.check_standard_error, 0.03, 0.97, 270)


def test_01_share_of_a_block_in_the_quadratic_part(not_yet):
    tokens, width = 785, 768  # ViT-B/16 at 448 px
    right = 4 * tokens**2 * width / (24 * tokens * width**2 + 4 * tokens**2 * width)
    assert l01.check_quadratic_share(right, image_size=448, patch_size=16, hidden_size=width) is True
    within_attention = 4 * tokens**2 * width / (8 * tokens * width**2 + 4 * tokens**2 * width)
    assert "MLP" in not_yet(l01.check_quadratic_share, within_attention, image_size=448, patch_size=16,
                            hidden_size=width)
    no_cls = 4 * 784**2 * width / (24 * 784 * width**2 + 4 * 784**2 * width)
    assert "CLS" in not_yet(l01.check_quadratic_share, no_cls, image_size=448, patch_size=16, hidden_size=width)
    assert "fraction" in not_yet(l01.check_quadratic_share, 14.6, image_size=448, patch_size=16, hidden_size=width)


@pytest.fixture
def vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)
    return ViTForImageClassification(config)


def train_only(model, trains):
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    return model


def test_02_bitfit_proper_by_hand(vit, not_yet):
    proper = lambda name: name.endswith(".bias") or name.startswith("classifier.")  # noqa: E731
    assert l02.check_bitfit_by_hand(train_only(copy.deepcopy(vit), proper)) is True
    kits = copy.deepcopy(vit)
    freezing.bitfit(kits)  # also trains the LayerNorm gains
    assert "gain" in not_yet(l02.check_bitfit_by_hand, kits)
    no_head = lambda name: name.endswith(".bias") and not name.startswith("classifier.")  # noqa: E731
    assert "classifier" in not_yet(l02.check_bitfit_by_hand, train_only(copy.deepcopy(vit), no_head))
    attention_only = lambda name: (name.endswith(".bias") and "attention" in name) or name.startswith(  # noqa: E731
        "classifier.")
    assert "biases are still frozen" in not_yet(l02.check_bitfit_by_hand, train_only(copy.deepcopy(vit), attention_only))
    assert "neither a bias" in not_yet(l02.check_bitfit_by_hand, train_only(copy.deepcopy(vit), lambda name: True))


def test_03_what_a_person_must_review(not_yet):
    assert l03.check_needs_review(["exact duplicate across classes", "empty class folder", "truncated JPEG"]) is True
    assert l03.check_needs_review({"exact duplicate across classes", "empty class folder"}) is True
    assert "two classes" in not_yet(l03.check_needs_review, ["empty class folder", "truncated JPEG"])
    assert "cannot be learned" in not_yet(l03.check_needs_review, ["exact duplicate across classes"])
    assert "converted to RGB" in not_yet(l03.check_needs_review, [
        "exact duplicate across classes", "empty class folder", "CMYK JPEG"])
    assert "list" in not_yet(l03.check_needs_review, "exact duplicate across classes")


def ablation(accuracies: dict[str, list[float]], test_images=270) -> l04.AblationResult:
    runs = [l04.AblationRun(preset, 15, seed, train.History([{"seconds": 1.0, "val_accuracy": a}]), a)
            for preset, values in accuracies.items() for seed, a in enumerate(values)]
    return l04.AblationResult(0.5, False, test_images, runs)


def test_04_reading_the_ablation_with_the_noise_rule(not_yet):
    result = ablation({"none": [0.970, 0.974, 0.966], "basic": [0.978, 0.974, 0.981],
                       "strong": [0.90, 0.91, 0.89]})
    assert result.verdict("basic", 15, ("none", 15)) == "within noise"
    assert result.verdict("strong", 15, ("none", 15)) == "worse"
    assert l04.check_ablation_verdict("within noise", result, "basic", 15) is True
    assert l04.check_ablation_verdict("worse", result, "strong", 15) is True
    assert "noise rule" in not_yet(l04.check_ablation_verdict, "better", result, "basic", 15)
    assert "sign" in not_yet(l04.check_ablation_verdict, "better", result, "strong", 15)
    assert "one of" in not_yet(l04.check_ablation_verdict, "same", result, "basic", 15)
    assert "within noise" in result.table() and "worse" in result.table()


def test_05_optimizer_steps_under_accumulation(not_yet):
    settings = profiles.resolve("cpu")  # 1,257 images, batch 64: 20 batches per epoch, 15 epochs
    assert l05.check_step_count(45, 4, 1257, settings, grad_accum=8) is True  # ceil(20 / 8) = 3 per epoch
    assert "batches, not optimizer steps" in not_yet(l05.check_step_count, 300, 30, 1257, settings, grad_accum=8)
    assert "round up" in not_yet(l05.check_step_count, 30, 3, 1257, settings, grad_accum=8)
    assert "warmup" in not_yet(l05.check_step_count, 45, 5, 1257, settings, grad_accum=8)
    assert "whole number" in not_yet(l05.check_step_count, 45.5, 4, 1257, settings, grad_accum=8)


def test_06_macro_f1_by_hand(not_yet):
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    preds = np.array([0, 0, 1, 2, 1, 1, 2, 2, 2, 0, 2, 2])
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    assert l06.check_macro_f1(f1_score(labels, preds, average="macro"), cm) is True
    assert "accuracy" in not_yet(l06.check_macro_f1, (labels == preds).mean(), cm)
    assert "support" in not_yet(l06.check_macro_f1, f1_score(labels, preds, average="weighted"), cm)
    assert "between 0 and 1" in not_yet(l06.check_macro_f1, 75.0, cm)


def test_presets_leave_the_flip_out_where_a_mirror_changes_the_label():
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    assert not data.mirror_safe("digits") and data.mirror_safe("cifar10") and data.mirror_safe("imagefolder:x")
    for preset in ("basic", "randaugment", "trivialaugment", "strong"):
        with_flip = data.build(preset, spec, num_classes=10).train_transform
        without = data.build(preset, spec, num_classes=10, flip=False).train_transform
        assert "RandomHorizontalFlip" in str(with_flip) and "RandomHorizontalFlip" not in str(without)
    settings = dataclasses.replace(profiles.resolve("smoke"), dataset_name="digits")
    assert not data.mirror_safe(settings.dataset_name)


def test_02_results_read_each_gap_to_full_fine_tuning_with_the_noise_rule():
    assert l02.gap_to(0.90, 0.97, 270) == "-7.0 pt, real"
    assert l02.gap_to(0.96, 0.97, 270) == "-1.0 pt, within noise"
    assert l02.gap_to(0.10, 0.10, 270) == "+0.0 pt, within noise"
    assert l02.gap_to(0.97, None, 270) == "-"


def test_06_the_tta_table_reads_each_gain_with_the_noise_rule():
    def row(mode, accuracy):
        return l06.TTAResult(mode, 1, accuracy, 1.0, None)

    table = l06.tta_table([row("none", 0.978), row("flip", 0.963), row("crops", 0.911)], n_images=270).splitlines()
    assert table[2].endswith("| +0.00 | 1.00 | 1.0x |") and "-1.50, within noise" in table[3]
    assert "-6.70, real" in table[4]
