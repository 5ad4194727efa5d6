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


def parse_overrides(pairs: list[list[str]], caller_directory: Path | None = None) -> dict:
    """`-p NAME VALUE` pairs to settings overrides, checked now (not inside every notebook); values are Python
    literals where they parse, and relative paths are taken from `caller_directory` (default: the current one)."""
    overrides = {}
    for name, text in pairs:
        if name not in profiles.SETTING_NAMES:
            raise ValueError(f"Unknown parameter {name!r}: the settings are {', '.join(profiles.SETTING_NAMES)}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        overrides[name] = from_caller_directory(name, value, caller_directory or Path.cwd())
    profiles.resolve("smoke", **overrides)
    return overrides


def from_caller_directory(name: str, value, caller_directory: Path):
    """An `imagefolder:` path, or a model folder that exists, made absolute from where the command was typed
    (the notebooks run inside notebooks/)."""
    if name == "dataset_name" and isinstance(value, str) and value.startswith("imagefolder:"):
        return f"imagefolder:{(caller_directory / Path(value.split(':', 1)[1]).expanduser()).resolve()}"
    if name == "model_name" and isinstance(value, str) and (caller_directory / Path(value).expanduser()).is_dir():
        return str((caller_directory / Path(value).expanduser()).resolve())
    return value


CELL_TIMEOUT_S = {"smoke": 600, "cpu": 3600, "gpu": 4 * 3600}  # per cell: ten times the longest cell, roughly


def cell_timeout(profile: str, asked: int | None = None) -> int | None:
    """The limit on one cell's run time in seconds: `asked` (0: none), else the default of `profile` (`auto`: the
    profile it stands for here)."""
    if asked is not None and asked < 0:
        raise ValueError(f"A cell timeout of {asked} s makes no sense: give 0 (no limit) or more seconds.")
    if asked is not None:
        return asked or None
    return CELL_TIMEOUT_S[profiles.choose_profile()[0] if profile == "auto" else profile]


def execute(notebook: Path, output: Path, parameters: dict, timeout: int | None = None) -> Result:
    """Execute one notebook with papermill, each cell limited to `timeout` seconds (None: no limit); the Result
    names the cell that failed, timed out or took the kernel down. Never raises for the notebook's sake."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    error = ""
    with tempfile.TemporaryDirectory(prefix="course-records-") as folder:
        records_file = Path(folder) / "records.jsonl"
        try:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters, kernel_name="python3",
                cwd=str(notebook.parent), progress_bar=False, execution_timeout=timeout,
                kernel_manager_class=kernel_manager_writing_to(records_file),
            )
        except PapermillExecutionError as failure:
            first_line = failure.source.strip().splitlines()[0] if failure.source.strip() else ""
            error = (f"cell {failure.cell_index} of {output} (In [{failure.exec_count}], starting "
                     f"{first_line!r}) raised {failure.ename}: {failure.evalue}")
        except DeadKernelError:
            error = (f"the kernel died in {last_started_cell(output)}: the process exited or was killed "
                     "(often for lack of memory)")
        except CellTimeoutError:
            error = (f"{last_started_cell(output)} ran past the cell timeout of {timeout} s: find what hangs, "
                     "or allow more with --cell-timeout")
        except Exception as failure:  # noqa: BLE001 - the kernel would not start, the file is not a notebook, ...
            error = f"papermill could not run it ({type(failure).__name__}: {str(failure).strip()[:300]})"
        records = read_records(records_file)
    seconds = time.perf_counter() - started
    return Result(notebook.stem, seconds, records, error)


def kernel_manager_writing_to(records_file: Path) -> type:
    """A kernel manager class whose kernels run headless (explorers draw one static view, bars end as one line)
    and whose `record()` calls append to `records_file`. Both go into the kernel's own environment, never this
    process's: notebooks run side by side (a sweep) keep apart, and a notebook that runs a sweep stays live."""
    from jupyter_client.manager import AsyncKernelManager

    class RecordsKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs):
            kwargs["env"] = {**os.environ, **kwargs.get("env", {}), "COURSE_HEADLESS": "1",
                             RECORDS_FILE: str(records_file)}
            return await super().start_kernel(**kwargs)

    return RecordsKernelManager


def last_started_cell(output: Path) -> str:
    """'cell N of OUTPUT (starting ...)': the last cell papermill started, where a run stopped without an error."""
    if not output.exists():
        return f"{output} (not written)"
    cells = nbformat.read(output, as_version=4).cells
    started = [i for i, cell in enumerate(cells)
               if cell.cell_type == "code" and cell.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return f"{output} (before its first cell)"
    source = cells[started[-1]].source.strip()
    return f"cell {started[-1]} of {output} (starting {source.splitlines()[0] if source else ''!r})"


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


def run(selection=None, profile: str = "auto", overrides: dict | None = None, out: Path = BUILD,
        timeout: int | None = None) -> list[Result]:
    """Execute the notebooks in order into `out`, each cell limited to `timeout` seconds (default: by profile);
    a notebook that fails is recorded and the next one runs. `out/summary.md` and `out/summary.json` are
    written after every notebook, so an interrupted run keeps its summary."""
    parameters = {"profile": profile, "overrides": overrides or {}}
    timeout = cell_timeout(profile, timeout)
    results = []
    for notebook in course_notebooks(selection):
        print(f"running {notebook.name} ...", flush=True)
        result = execute(notebook, out / notebook.name, parameters, timeout)
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


def refresh_outputs(selection=None, timeout: int | None = None) -> list[Result]:
    """Re-execute notebooks in the cpu profile and store them, with outputs, back in notebooks/; each cell is
    limited to `timeout` seconds (default: the cpu profile's)."""
    timeout = cell_timeout("cpu", timeout)
    results = []
    for notebook in course_notebooks(selection):
        print(f"refreshing {notebook.name} ...", flush=True)
        result = execute(notebook, notebook, {"profile": "cpu"}, timeout)
        if result.ok:
            clean_for_commit(notebook)
        print(f"  {'ok' if result.ok else 'FAILED: ' + result.error} in {result.seconds:.0f} s", flush=True)
        results.append(result)
    return results
