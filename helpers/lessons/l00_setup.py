"""Lesson 00's companion: the checker of its exercise (how precise is a test accuracy?)."""
from __future__ import annotations

import math
import numbers

from helpers.course.checks import checker


@checker
def check_standard_error(your_value: float, accuracy: float, test_images: int) -> bool:
    """Exercise checker: `your_value` must be the standard error of `accuracy` measured on `test_images` images."""
    number = isinstance(your_value, numbers.Real) and not isinstance(your_value, bool)
    if not number or not math.isfinite(your_value) or your_value <= 0:
        raise AssertionError(f"Give the standard error as a positive number, got {your_value!r}.")
    variance = accuracy * (1 - accuracy) / test_images
    expected = math.sqrt(variance)
    if math.isclose(your_value, expected * 100, rel_tol=1e-3):
        raise AssertionError("That is in percentage points: give it as a fraction, like the accuracy itself.")
    if math.isclose(your_value, variance, rel_tol=1e-3):
        raise AssertionError("That is the variance of the accuracy: the standard error is its square root.")
    if math.isclose(your_value, math.sqrt(accuracy * (1 - accuracy)), rel_tol=1e-3):
        raise AssertionError("That is the spread of one image's outcome: divide the variance by the number of "
                             "test images before taking the square root.")
    if any(math.isclose(your_value, z * expected, rel_tol=1e-3) for z in (1.96, 2)):
        raise AssertionError("That is the half-width of a 95% interval, about two standard errors: give one.")
    if not math.isclose(your_value, expected, rel_tol=1e-3):
        raise AssertionError("Not quite: each test image is a coin flip that comes up right with probability p; "
                             "the standard error of the mean of n such flips is sqrt(p (1 - p) / n).")
    print(f"Correct: on {test_images} test images an accuracy of {accuracy:.1%} is known to about "
          f"± {2 * expected:.1%} (two standard errors).")
    return True
