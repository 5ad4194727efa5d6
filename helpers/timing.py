"""Timings a reader can trust (lessons 02–06): the median of repeats, with the machine's load printed beside it.

A wall-clock time on a shared machine depends on what else runs; one measurement can be off by a
factor. The median of a few repeats ignores a single slow outlier, and the load average says how
busy the machine was, so a reader can tell a slow machine from a slow method.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Callable


def median_of_repeats(measure: Callable[[], float], repeats: int = 3) -> float:
    """The median of `repeats` calls of `measure()` (each returns one number, e.g. seconds or images/s) (lesson 03)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    return statistics.median(measure() for _ in range(repeats))


def machine_load() -> str:
    """This machine's cores and, where the OS reports it, the 1-minute load average (lesson 03).

    The load average counts the processes that want a core: above the number of cores, every timing is slower.
    """
    cores = f"{os.cpu_count()} cores"
    if not hasattr(os, "getloadavg"):
        return cores
    return f"{cores}, load average {os.getloadavg()[0]:.1f} (processes wanting a core)"
