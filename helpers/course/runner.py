"""Running notebooks headless with papermill: one notebook, the whole course with a summary, refreshed outputs."""
from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers import profiles
from helpers.course.notebook import BUILD, NOTEBOOKS, RECORDS_FILE, format_value, read_records


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
    os.environ["COURSE_HEADLESS"] = "1"  # the kernel inherits it: explorers draw one static view, bars one line
    started = time.perf_counter()
    error = ""
    with tempfile.TemporaryDirectory(prefix="course-records-") as folder:
        records_file = Path(folder) / "records.jsonl"
        os.environ[RECORDS_FILE] = str(records_file)  # where the kernel's record() calls write
        try:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters, kernel_name="python3",
                cwd=str(notebook.parent), progress_bar=False,
            )
        except PapermillExecutionError as failure:
            first_line = failure.source.strip().splitlines()[0] if failure.source.strip() else ""
            error = (f"cell {failure.cell_index} of {output} (In [{failure.exec_count}], starting "
                     f"{first_line!r}) raised {failure.ename}: {failure.evalue}")
        finally:
            os.environ.pop(RECORDS_FILE, None)
        records = read_records(records_file)
    seconds = time.perf_counter() - started
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
