"""Run the course: notebooks headless with papermill, and what each notebook records.

    python -m helpers.course run                       # every notebook, default profile -> build/
    python -m helpers.course run 02_freezing -p epochs 3 --profile cpu
    python -m helpers.course outputs                   # refresh the committed outputs (cpu profile)
    python -m helpers.course student --out build/student  # copies without solutions, for a workshop

Inside a notebook, `start(profile, overrides)` resolves the settings and prints the
environment report; `record(name=value, ...)` stores key results in the executed
notebook, where `run` reads them back for its summary.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers import profiles

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"
RECORD_KEY = "course_record"


# ---------------------------------------------------------------- inside a notebook
def start(profile: str = "auto", overrides: dict | None = None) -> profiles.Settings:
    """Resolve the notebook's settings, print the environment report, and record the profile.

    Also turns on inline figures (so a returned matplotlib Figure shows, headless too) and
    quiets transformers' own load logs: the kit prints its own load report where it matters.
    """
    prepare_notebook_display()
    settings = profiles.resolve(profile, **(overrides or {}))
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


# ---------------------------------------------------------------- running notebooks
@dataclass
class Result:
    notebook: str
    seconds: float
    records: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def course_notebooks(selection: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in course order, or those named in `selection` (by stem or path)."""
    available = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return available
    by_stem = {path.stem: path for path in available}
    chosen = []
    for name in selection:
        path = by_stem.get(Path(name).stem)
        if path is None:
            raise ValueError(f"No notebook {name!r}: choose from {', '.join(by_stem)}.")
        chosen.append(path)
    return chosen


def parse_overrides(pairs: list[list[str]]) -> dict:
    """`-p NAME VALUE` pairs to settings overrides; values are Python literals where they parse."""
    overrides = {}
    for name, text in pairs:
        if name not in profiles.SETTING_NAMES:
            raise ValueError(f"Unknown parameter {name!r}: the settings are {', '.join(profiles.SETTING_NAMES)}.")
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name] = text
    profiles.resolve("smoke", **overrides)  # validate values now, not inside every notebook
    return overrides


def execute(notebook: Path, output: Path, parameters: dict) -> Result:
    """Execute one notebook with papermill; the Result names the failing cell if there is one."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    os.environ["COURSE_HEADLESS"] = "1"  # the kernel inherits it: explorers draw one static view
    started = time.perf_counter()
    error = ""
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name="python3",
            cwd=str(notebook.parent), progress_bar=False,
        )
    except PapermillExecutionError as failure:
        first_line = failure.source.strip().splitlines()[0] if failure.source.strip() else ""
        error = (f"cell {failure.cell_index} of {output} (In [{failure.exec_count}], starting "
                 f"{first_line!r}) raised {failure.ename}: {failure.evalue}")
    seconds = time.perf_counter() - started
    records = read_records(nbformat.read(output, as_version=4)) if output.exists() else {}
    return Result(notebook.stem, seconds, records, error)


def summary_table(results: list[Result]) -> str:
    lines = ["| notebook | status | profile | wall time | key results |", "|---|---|---|---|---|"]
    for result in results:
        records = dict(result.records)
        profile = records.pop("profile", "?")
        for key in ("model", "dataset"):
            records.pop(key, None)
        key_results = ", ".join(f"{k}={format_value(v)}" for k, v in records.items()) or "-"
        status = "ok" if result.ok else f"FAILED: {result.error}"
        lines.append(f"| {result.notebook} | {status} | {profile} | {result.seconds:.0f} s | {key_results} |")
    return "\n".join(lines)


def run(selection=None, profile: str = "auto", overrides: dict | None = None, out: Path = BUILD) -> list[Result]:
    """Execute the notebooks in order into `out`; write `out/summary.md` and `out/summary.json`."""
    parameters = {"profile": profile, "overrides": overrides or {}}
    results = []
    for notebook in course_notebooks(selection):
        print(f"running {notebook.name} ...", flush=True)
        result = execute(notebook, out / notebook.name, parameters)
        print(f"  {'ok' if result.ok else 'FAILED'} in {result.seconds:.0f} s"
              + (f": {notebook.name} {result.error}" if result.error else ""), flush=True)
        results.append(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary_table(results) + "\n")
    (out / "summary.json").write_text(json.dumps([vars(r) for r in results], indent=1))
    return results


def clean_for_commit(path: Path) -> None:
    """Drop papermill's bookkeeping and widget state so a committed notebook stays small and stable."""
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("papermill", None)
    notebook.metadata.pop("widgets", None)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nbformat.write(notebook, path)


def refresh_outputs(selection=None) -> list[Result]:
    """Re-execute notebooks in the cpu profile and store them, with outputs, back in notebooks/."""
    results = []
    for notebook in course_notebooks(selection):
        print(f"refreshing {notebook.name} ...", flush=True)
        result = execute(notebook, notebook, {"profile": "cpu"})
        if result.ok:
            clean_for_commit(notebook)
        print(f"  {'ok' if result.ok else 'FAILED: ' + result.error} in {result.seconds:.0f} s", flush=True)
        results.append(result)
    return results


SOLUTION_BLOCK = re.compile(r"^([ \t]*)# BEGIN SOLUTION\n.*?^[ \t]*# END SOLUTION[^\n]*", re.S | re.M)


def strip_solutions(source: str) -> str:
    """Replace every `# BEGIN SOLUTION ... # END SOLUTION` block with a prompt for the student."""
    return SOLUTION_BLOCK.sub(r"\1# YOUR CODE HERE\n\1raise NotImplementedError('write your solution here')", source)


def make_student_copies(out: Path, selection=None) -> list[Path]:
    """Notebooks without solutions and without outputs, for students; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks(selection):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.source = strip_solutions(cell.source)
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, out / path.name)
        written.append(out / path.name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="execute notebooks headless into build/ with a summary")
    run_parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    run_parser.add_argument("--profile", default="auto", choices=profiles.PROFILE_NAMES)
    run_parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                            help="override one setting, e.g. -p epochs 3")
    run_parser.add_argument("--out", type=Path, default=BUILD)
    outputs_parser = commands.add_parser("outputs", help="refresh the committed outputs (cpu profile)")
    outputs_parser.add_argument("notebooks", nargs="*")
    student_parser = commands.add_parser("student", help="student copies: solutions removed, outputs cleared")
    student_parser.add_argument("notebooks", nargs="*")
    student_parser.add_argument("--out", type=Path, default=BUILD / "student")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            results = run(args.notebooks, args.profile, parse_overrides(args.param), args.out)
            print(f"\nsummary written to {args.out / 'summary.md'}\n\n{summary_table(results)}")
        elif args.command == "student":
            written = make_student_copies(args.out, args.notebooks)
            print(f"{len(written)} student notebooks written to {args.out}")
            return 0
        else:
            results = refresh_outputs(args.notebooks)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [r.notebook for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
