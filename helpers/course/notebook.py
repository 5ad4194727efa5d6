"""What a notebook calls: `start()` resolves its settings and prints the environment report,
`record()` stores a key result for the run's summary and the tests, `show_code()` shows library code."""
from __future__ import annotations

from pathlib import Path

import nbformat

from helpers import profiles

ROOT = Path(__file__).resolve().parents[2]


NOTEBOOKS = ROOT / "notebooks"


BUILD = ROOT / "build"


RECORD_KEY = "course_record"


def start(profile: str = "auto", overrides: dict | None = None) -> profiles.Settings:
    """Resolve the notebook's settings, seed every random generator with `settings.seed`, print the environment
    report, and record the profile.

    Seeding here makes everything random that follows (a new classification head, a random
    pick of images) the same in every run of the notebook with the same seed. Also turns on
    inline figures (so a returned matplotlib Figure shows, headless too) and quiets
    transformers' own load logs: the kit prints its own load report where it matters.
    """
    from helpers.train import seed_everything

    prepare_notebook_display()
    settings = profiles.resolve(profile, **(overrides or {}))
    seed_everything(settings.seed)
    print(profiles.environment_report(settings))
    record(profile=settings.profile, model=settings.model_name, dataset=settings.dataset_name)
    return settings


def prepare_notebook_display() -> None:
    from IPython import get_ipython
    from transformers.utils import logging as transformers_logging

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def record(**values) -> None:
    """Show key results and store them in the notebook's output, for `course run`'s summary and the tests."""
    from IPython.display import display

    plain = {key: to_plain(value) for key, value in values.items()}
    text = "  ".join(f"{key}={format_value(value)}" for key, value in plain.items())
    display({"text/plain": f"recorded: {text}"}, raw=True, metadata={RECORD_KEY: plain})


def to_plain(value):
    """Numbers, strings, bools and lists of them as JSON-ready Python values (numpy and torch included)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    return value


def format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_records(notebook: nbformat.NotebookNode) -> dict:
    """Every value recorded in an executed notebook (later records win)."""
    values = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            values.update(output.get("metadata", {}).get(RECORD_KEY, {}))
    return values


def show_code(*objects):
    """The source of functions or classes as a highlighted Markdown code block, for reading in a notebook."""
    import inspect

    from IPython.display import Markdown

    return Markdown("\n\n".join(f"```python\n{inspect.getsource(obj).rstrip()}\n```" for obj in objects))
