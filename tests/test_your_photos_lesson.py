"""Lesson 07's and 08's companions: the default photo set, the strategy rule, the leak measure, the sweep's pick.
Their exercise checkers are in tests/test_checkers.py's table."""
import numpy as np
import pytest
import torch

from helpers import course, data
from helpers.course.finetune import Evaluation
from helpers.evaluate import Predictions
from helpers.lessons import l07_your_photos as l07
from helpers.lessons import l08_sweep as l08


def test_default_set_is_real_photographs_in_groups_with_phone_style_files(tmp_path):
    root = l07.write_surface_set(tmp_path / "set", crops_per_region=2)
    files = l07.write_phone_style_files(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(l07.SURFACES)
    assert all(len(list((root / name).glob("r*_0.png"))) == l07.REGIONS ** 2 for name in l07.SURFACES)
    assert data.read_photo(files["16-bit PNG"]).float().mean() < 250  # not saturated
    assert tuple(data.read_photo(files["EXIF orientation 6"]).shape) == tuple(data.read_photo(
        root / "brick" / "r5_0.png").shape)
    with pytest.raises(ValueError, match="not empty"):
        l07.write_surface_set(root)


def test_the_memoriser_is_perfect_on_copies_and_blind_without_them():
    features = torch.eye(4).repeat(2, 1)  # items i and i + 4 are copies
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    assert l07.neighbour_accuracy(features, labels, ([0, 1, 2, 3], [], [4, 5, 6, 7])) == 1.0
    assert l07.neighbour_accuracy(features, [0, 0, 1, 1, 1, 1, 0, 0], ([0, 1, 2, 3], [], [4, 5, 6, 7])) == 0.0


def evaluation(val_correct):
    correct = np.asarray(val_correct, dtype=bool)
    val = Predictions(np.zeros((len(correct), 2)), np.full((len(correct), 2), 0.5), np.zeros(len(correct), int),
                      np.where(correct, 0, 1))
    return Evaluation(val, val, None, (0.0, 1.0), 0.0, 1.0)


def test_the_rule_tries_lora_only_when_frozen_features_beat_pixels_and_ships_it_unless_full_is_clearly_better():
    assert l07.choose_candidates(0.8, 0.7)[0] == ["lora", "full"]
    assert l07.choose_candidates(0.7, 0.8)[0] == ["full"]
    lora, full = [True] * 40 + [False] * 20, [True] * 58 + [False] * 2
    assert l07.pick_strategy({"lora": evaluation(lora), "full": evaluation(full)})[0] == "full"
    assert l07.pick_strategy({"lora": evaluation(full), "full": evaluation(full)})[0] == "lora"
    assert l07.pick_strategy({"full": evaluation(full)})[0] == "full"


def test_the_cheapest_setting_within_the_noise_is_the_quickest_within_one_sd_of_the_best():
    from helpers.course.sweep import SweepRun, summarize

    def run(strategy, seed, val, seconds):
        return SweepRun({"strategy": strategy, "seed": seed}, course.Result("07", seconds, {"val_accuracy": val}))

    summaries = summarize([run("full", 0, 0.90, 10), run("full", 1, 0.80, 10), run("lora", 0, 0.84, 5),
                           run("lora", 1, 0.84, 5), run("probe", 0, 0.5, 1), run("probe", 1, 0.5, 1)])
    assert l08.cheapest_within_noise(summaries) == {"strategy": "lora"}
