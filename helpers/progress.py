"""Progress bars for every lesson: live in JupyterLab, one final line of plain text when headless.

A tqdm widget saved in a notebook keeps only its first frame ("0%|"), because the widget's state
is not stored. Headless (`COURSE_HEADLESS=1`, set by the runner and the tests) a bar therefore
draws nothing while it runs and prints one line when it ends, such as ``ablation: 12/12 in 03:05``;
a bar made with ``leave=False`` leaves nothing behind, as it does in JupyterLab.
"""
from __future__ import annotations

import io

from tqdm.auto import tqdm as live_bar
from tqdm.std import tqdm as text_bar

from helpers.widgets import is_headless

FINAL_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} in {elapsed}"


class FinalLine(text_bar):
    """A tqdm bar that writes nothing while it runs and prints one line of plain text when it closes (lesson 00)."""

    def __init__(self, *args, **kwargs):
        kwargs.update(file=io.StringIO(), bar_format=FINAL_LINE_FORMAT, dynamic_ncols=False)
        super().__init__(*args, **kwargs)

    def close(self):
        if self.disable:
            return
        line, leave = self.format_meter(**self.format_dict), self.leave
        super().close()
        if leave:
            print(line, flush=True)


def progress_bar(iterable=None, desc: str | None = None, *, leave: bool = True, disable: bool = False, **kwargs):
    """A progress bar over `iterable`: tqdm's live bar in JupyterLab, `FinalLine` when headless (lesson 00).

    Takes tqdm's arguments (`total`, `unit`, ...) and returns the bar, so `set_postfix_str` works.
    """
    bar = FinalLine if is_headless() else live_bar
    return bar(iterable, desc=desc, leave=leave, disable=disable, **kwargs)
