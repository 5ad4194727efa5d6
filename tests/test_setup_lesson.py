"""Lesson 00's checker accepts the standard error of an accuracy and nothing near it."""
import math
import re

import pytest

from helpers.lessons import l00_setup


def test_the_standard_error_is_accepted(capsys):
    assert l00_setup.check_standard_error(math.sqrt(0.97 * 0.03 / 270), 0.97, 270)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (math.sqrt(0.97 * 0.03 / 270) * 100, "percentage points"),
    (0.97 * 0.03 / 270, "variance"),
    (math.sqrt(0.97 * 0.03), "divide the variance"),
    (math.sqrt(0.97 * 0.03 / 1257), "sqrt"),  # the training set's size
    (-0.01, "positive number"),
])
def test_plausible_wrong_answers_get_a_hint_without_the_value(wrong, hint, not_yet):
    printed = not_yet(l00_setup.check_standard_error, wrong, 0.97, 270)
    assert re.search(hint, printed) and f"{math.sqrt(0.97 * 0.03 / 270):.4f}" not in printed
