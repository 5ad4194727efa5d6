"""What the judgement exercises read: the ablation's verdicts, the gaps and gains judged by the noise rule, and the
data-aware presets. The checkers themselves are in tests/test_checkers.py's table."""
import dataclasses

from helpers import data, profiles, train
from helpers.lessons import l02_freezing as l02
from helpers.lessons import l04_augmentation as l04
from helpers.lessons import l06_evaluation as l06


def ablation(accuracies: dict[str, list[float]], test_images=270) -> l04.AblationResult:
    runs = [l04.AblationRun(preset, 15, seed, train.History([{"seconds": 1.0, "val_accuracy": a}]), a)
            for preset, values in accuracies.items() for seed, a in enumerate(values)]
    return l04.AblationResult(0.5, False, test_images, runs)


def test_04_the_ablation_reads_each_gap_with_the_noise_rule():
    result = ablation({"none": [0.970, 0.974, 0.966], "basic": [0.978, 0.974, 0.981],
                       "strong": [0.90, 0.91, 0.89]})
    assert result.verdict("basic", 15, ("none", 15)) == "within noise"
    assert result.verdict("strong", 15, ("none", 15)) == "worse"
    assert "within noise" in result.table() and "worse" in result.table()


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
