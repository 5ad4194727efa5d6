"""A notebook over a grid of parameters, headless with papermill (lesson 08):

    python -m helpers.course sweep 07_your_photos -p lr 1e-4,3e-4 -p seed 0,1,2 --jobs 2

Each `-p NAME V1,V2,...` is one axis of the grid: a setting (lr, seed, epochs, ...) goes into the notebook's
`overrides`, any other name must be a parameter of the notebook's parameters cell (e.g. `strategy`). Every run
records its results with `course.record`; the sweep gathers them into one table and one plot, picks the setting
with the best mean validation accuracy over seeds, and reports the test accuracy of that setting only.
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat

from helpers import profiles
from helpers.course.notebook import BUILD, format_value
from helpers.course.runner import Result, course_notebooks, execute


def notebook_parameters(path: Path) -> list[str]:
    """The names assigned in a notebook's `parameters` cell."""
    notebook = nbformat.read(path, as_version=4)
    cell = next((c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return []
    return [target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)]


def parse_grid(pairs: list[list[str]], notebook: Path) -> dict[str, list]:
    """`-p NAME V1,V2` pairs as {name: [values]}; names are settings or the notebook's own parameters."""
    allowed = [name for name in notebook_parameters(notebook) if name not in ("profile", "overrides")]
    grid = {}
    for name, text in pairs:
        if name not in profiles.SETTING_NAMES and name not in allowed:
            raise ValueError(f"Unknown parameter {name!r} for {notebook.stem}: choose a setting "
                             f"({', '.join(profiles.SETTING_NAMES)}) or one of the notebook's ({', '.join(allowed)}).")
        grid[name] = [_literal(value) for value in text.split(",") if value.strip()]
        if not grid[name]:
            raise ValueError(f"-p {name} got no values: give them separated by commas, e.g. -p {name} 1,2.")
    for point in grid_points(grid):  # check every value of every setting before anything runs
        profiles.resolve("smoke", **{k: v for k, v in point.items() if k in profiles.SETTING_NAMES})
    return grid


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, as {name: value}, in the order the axes were given."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def papermill_parameters(point: dict, profile: str, overrides: dict | None = None) -> dict:
    """The notebook's parameters for one point: settings join `overrides`, the others are passed by name."""
    settings = {k: v for k, v in point.items() if k in profiles.SETTING_NAMES}
    others = {k: v for k, v in point.items() if k not in profiles.SETTING_NAMES}
    return {"profile": profile, "overrides": {**(overrides or {}), **settings}, **others}


@dataclass
class SweepRun:
    """One point of the grid and what its notebook run recorded (lesson 08)."""

    point: dict
    result: Result


def sweep(notebook: str, grid: dict[str, list], profile: str = "auto", jobs: int = 1, out: Path = BUILD / "sweep",
          overrides: dict | None = None, quiet: bool = False) -> list[SweepRun]:
    """Run `notebook` once per grid point, up to `jobs` at once, into `out`; write `out/sweep.json` (lesson 08).

    `overrides` are settings every run gets (a grid value of the same name wins). `quiet` prints nothing
    while the runs go and keeps their kernels' start-up messages out of this process's output.
    """
    [path] = course_notebooks([notebook])
    points = grid_points(grid)
    out.mkdir(parents=True, exist_ok=True)

    def one(numbered):
        number, point = numbered
        name = "_".join(f"{k}-{v}" for k, v in point.items()) or "default"
        if not quiet:
            print(f"running {path.stem} with {point} ...", flush=True)
        return SweepRun(point, execute(path, out / f"{number:03d}_{name}.ipynb",
                                       papermill_parameters(point, profile, overrides)))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, _children_silenced(quiet):
        runs = list(pool.map(one, enumerate(points)))
    (out / "sweep.json").write_text(json.dumps(
        [{"point": run.point, "seconds": run.result.seconds, "records": run.result.records,
          "error": run.result.error} for run in runs], indent=1))
    return runs


@contextmanager
def _children_silenced(silence: bool):
    """Kernels started meanwhile inherit this process's stderr: point it at /dev/null for the block."""
    if not silence:
        yield
        return
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class SettingSummary:
    """The runs of one setting (all grid values but the seed): validation accuracy over seeds and wall time."""

    setting: dict
    val_accuracies: list[float]
    test_accuracies: list[float]
    seconds: list[float]

    @property
    def val_mean(self) -> float:
        return statistics.fmean(self.val_accuracies)

    @property
    def val_spread(self) -> float:
        return statistics.stdev(self.val_accuracies) if len(self.val_accuracies) > 1 else 0.0


def summarize(runs: list[SweepRun], metric: str = "val_accuracy", test_metric: str = "test_accuracy",
              seed_name: str = "seed") -> list[SettingSummary]:
    """One summary per setting, best mean validation accuracy first; failed runs are left out (lesson 08)."""
    by_setting: dict[str, SettingSummary] = {}
    for run in runs:
        if not run.result.ok or metric not in run.result.records:
            continue
        setting = {k: v for k, v in run.point.items() if k != seed_name}
        summary = by_setting.setdefault(json.dumps(setting, sort_keys=True), SettingSummary(setting, [], [], []))
        summary.val_accuracies.append(run.result.records[metric])
        summary.test_accuracies.append(run.result.records.get(test_metric, float("nan")))
        summary.seconds.append(run.result.seconds)
    return sorted(by_setting.values(), key=lambda s: -s.val_mean)


def sweep_table(summaries: list[SettingSummary]) -> str:
    """Markdown: every setting's validation accuracy (mean ± sd over seeds) and wall time; test for the pick only."""
    if not summaries:
        raise ValueError("No run of the sweep recorded a validation accuracy: see the errors in sweep.json.")
    lines = ["| setting | seeds | val accuracy | wall time | test accuracy |", "|---|---:|---:|---:|---:|"]
    for rank, summary in enumerate(summaries):
        name = ", ".join(f"{k}={format_value(v)}" for k, v in summary.setting.items()) or "default"
        test = "not looked at"
        if rank == 0:
            test = f"**{statistics.fmean(summary.test_accuracies):.1%}**"
            if len(summary.test_accuracies) > 1:
                test += f" ± {statistics.stdev(summary.test_accuracies):.1%}"
        lines.append(f"| {name}{' (picked)' if rank == 0 else ''} | {len(summary.val_accuracies)} | "
                     f"{summary.val_mean:.1%} ± {summary.val_spread:.1%} | {statistics.fmean(summary.seconds):.0f} s "
                     f"| {test} |")
    return "\n".join(lines)


def plot_sweep(summaries: list[SettingSummary]):
    """Validation accuracy (mean, bars = one sd over seeds) against wall time per run, one point per setting."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for summary in summaries:
        label = ", ".join(f"{k}={format_value(v)}" for k, v in summary.setting.items()) or "default"
        ax.errorbar(statistics.fmean(summary.seconds), summary.val_mean, yerr=summary.val_spread, fmt="o", capsize=4,
                    label=label)
    ax.set(xlabel="wall time per run (s)", ylabel="validation accuracy", title="sweep: accuracy over seeds vs time")
    ax.legend(fontsize=7)
    return fig


class SweepCommand:
    name, help = "sweep", "run one notebook over a grid (-p NAME V1,V2 ...), up to --jobs at once; pick by validation"

    def add_arguments(self, parser) -> None:
        parser.add_argument("notebook", help="the notebook, e.g. 07_your_photos")
        parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                            help="one axis of the grid, values separated by commas, e.g. -p seed 0,1,2")
        parser.add_argument("--profile", default="auto", choices=profiles.PROFILE_NAMES)
        parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once (each one uses a kernel)")
        parser.add_argument("--out", type=Path, default=BUILD / "sweep")

    def run(self, args) -> int:
        [path] = course_notebooks([args.notebook])
        runs = sweep(args.notebook, parse_grid(args.param, path), args.profile, args.jobs, args.out)
        failed = [run for run in runs if not run.result.ok]
        for run in failed:
            print(f"FAILED {run.point}: {run.result.error}")
        summaries = summarize(runs)
        table = sweep_table(summaries)
        (args.out / "sweep.md").write_text(table + "\n")
        plot_sweep(summaries).savefig(args.out / "sweep.png", dpi=100)
        print(f"\n{table}\n\ntable and plot written to {args.out}")
        return 1 if failed else 0
