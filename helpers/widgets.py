"""ipywidgets explorers that degrade to one static figure when a notebook runs headless.

Headless means `COURSE_HEADLESS=1`, which `helpers.course` and the test suite set for
papermill and nbval runs; in JupyterLab the controls are live.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
from IPython.display import display


def is_headless() -> bool:
    """True when the notebook runs without a live front end (`COURSE_HEADLESS=1`) (lesson 01)."""
    return os.environ.get("COURSE_HEADLESS") == "1"


def explorer(draw, **controls):
    """Call `draw(**values) -> Figure` from ipywidgets controls (ipywidgets `interact` abbreviations) (lesson 01).

    Headless, the figure for the controls' initial values is shown once, with a note.
    Returns the live `interactive` widget, or None when headless.
    """
    import ipywidgets

    def show(**values):
        figure = draw(**values)
        display(figure)
        plt.close(figure)

    if is_headless():
        initial = ipywidgets.interactive(lambda **values: None, **controls).kwargs
        show(**initial)
        print("(static view for the initial controls; open the notebook in JupyterLab to explore)")
        return None
    widget = ipywidgets.interactive(show, **controls)
    display(widget)
    return widget
