"""Lesson 08's companion: the grid each profile sweeps, and the exercise checker."""
from __future__ import annotations

import statistics

from helpers.course.checks import checker

GRIDS = {  # lesson 07 over strategy x seed: three seeds show how much one run can be trusted; every run of 07
    # also trains the probe, its baseline, so the probe's numbers come with each run
    "smoke": {"strategy": ["probe"], "seed": [0, 1]},
    "cpu": {"strategy": ["lora", "full"], "epochs": [5], "seed": [0, 1, 2]},  # 5 epochs: 6 runs in minutes
    "gpu": {"strategy": ["probe", "lora", "full"], "lr": [1e-4, 3e-4], "seed": [0, 1, 2]},
}


def cheapest_within_noise(summaries) -> dict:
    """The setting with the smallest mean wall time among those whose mean validation accuracy is within one
    standard deviation (over seeds) of the best one."""
    best = summaries[0]
    close = [s for s in summaries if s.val_mean >= best.val_mean - best.val_spread]
    return min(close, key=lambda s: statistics.fmean(s.seconds)).setting


@checker
def check_cheapest_within_noise(your_setting, summaries) -> None:
    """Exercise: the cheapest setting whose validation accuracy is within one sd of the best."""
    assert isinstance(your_setting, dict), "give the setting as a dict, e.g. summaries[1].setting"
    expected = cheapest_within_noise(summaries)
    best = summaries[0]
    if your_setting != expected:
        mine = next((s for s in summaries if s.setting == your_setting), None)
        assert mine is not None, "that setting is not in the sweep: pick one of the summaries' .setting"
        assert mine.val_mean >= best.val_mean - best.val_spread, \
            "its validation accuracy is further than one sd (of the best setting) below the best"
        raise AssertionError("it is within the noise, but another setting within the noise takes less time")
    print(f"Correct: {expected} is within one sd of the best and the cheapest of those.")
