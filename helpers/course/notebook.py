"""What a notebook calls: `start()` resolves its settings and prints the environment report,
`record()` stores a key result for the run's summary and the tests, `show_code()` shows library code."""
from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import caches, profiles

ROOT = Path(__file__).resolve().parents[2]


NOTEBOOKS = ROOT / "notebooks"


BUILD = ROOT / "build"


RECORDS_FILE = "COURSE_RECORDS"  # the environment variable through which the runner names its records file


RECORDED: dict = {}  # what this kernel recorded so far, for a look in JupyterLab


def start(profile: str = "auto", overrides: dict | None = None) -> profiles.Settings:
    """Resolve the notebook's settings, seed every random generator with `settings.seed`, print the environment
    report, and record the profile.

    Seeding here makes everything random that follows (a new classification head, a random
    pick of images) the same in every run of the notebook with the same seed. In the gpu profile the
    settings follow the plan for this GPU (`profiles.follow_device_plan`); on stand-ins
    (`prefetch --stand-in`) a banner comes first. Also turns on inline figures (so a returned
    matplotlib Figure shows, headless too) and quiets transformers' own load logs: the kit prints
    its own load report where it matters.
    """
    from helpers.train import seed_everything

    prepare_notebook_display()
    overrides = overrides or {}
    settings = profiles.resolve(profile, **overrides)
    settings = profiles.follow_device_plan(settings, [name for name, value in overrides.items() if value is not profiles.KEEP])
    seed_everything(settings.seed)
    stand_ins = caches.stand_ins_in_use(settings.model_name, settings.dataset_name)
    if stand_ins:
        print(caches.stand_in_banner(stand_ins))
    print(profiles.environment_report(settings))
    record(profile=settings.profile, model=settings.model_name, dataset=settings.dataset_name,
           **({"stand_in": True} if stand_ins else {}))
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
    """Store key results for `course run`'s summary and the tests, without showing anything in the notebook.

    The runner names a file in the environment variable `COURSE_RECORDS`; each call appends one JSON
    line to it. Without one (JupyterLab) the values are kept in `RECORDED` only.
    """
    plain = {key: to_plain(value) for key, value in values.items()}
    RECORDED.update(plain)
    path = os.environ.get(RECORDS_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as records:
            records.write(json.dumps(plain) + "\n")


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


def read_records(path: str | os.PathLike) -> dict:
    """Every value `record()` appended to the records file at `path` (later records win); {} if there is none."""
    values = {}
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            values.update(json.loads(line))
    return values


def show_code(*objects):
    """The source of functions or classes as a highlighted Markdown code block, for reading in a notebook."""
    import inspect

    from IPython.display import Markdown

    return Markdown("\n\n".join(f"```python\n{inspect.getsource(obj).rstrip()}\n```" for obj in objects))
