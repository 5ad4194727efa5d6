"""`python -m helpers.course sweep`: a notebook over a grid with papermill, summarised and picked by validation."""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import course
from helpers.course import sweep as sweeps


def fake_lesson(folder):
    """A notebook that records a validation and a test accuracy from its lr, seed and strategy."""
    cells = [new_markdown_cell("# fake"),
             new_code_cell('profile = "auto"\noverrides = {}\nstrategy = "lora"'),
             new_code_cell("from helpers import course\nsettings = course.start(profile, overrides)\n"
                           "gain = {'lora': 0.1, 'full': 0.0}[strategy]\n"
                           "course.record(val_accuracy=0.5 + gain + settings.lr * 100 + settings.seed / 100,\n"
                           "              test_accuracy=0.4 + gain + settings.seed / 100)")]
    cells[1].metadata["tags"] = ["parameters"]
    path = folder / "07_fake.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                       "language": "python"}}), path)
    return path


def test_grid_names_are_settings_or_the_notebooks_parameters(tmp_path):
    path = fake_lesson(tmp_path)
    assert sweeps.notebook_parameters(path) == ["profile", "overrides", "strategy"]
    grid = sweeps.parse_grid([["lr", "1e-4,3e-4"], ["strategy", "lora,full"]], path)
    assert grid == {"lr": [1e-4, 3e-4], "strategy": ["lora", "full"]}
    assert sweeps.papermill_parameters({"lr": 1e-4, "strategy": "full"}, "smoke") == {
        "profile": "smoke", "overrides": {"lr": 1e-4}, "strategy": "full"}
    assert len(sweeps.grid_points(grid)) == 4
    with pytest.raises(ValueError, match="Unknown parameter 'lrate'.*strategy"):
        sweeps.parse_grid([["lrate", "1"]], path)
    with pytest.raises(ValueError, match="lr must be greater than 0"):
        sweeps.parse_grid([["lr", "1e-3,0"]], path)


def test_sweep_runs_the_grid_picks_by_validation_and_shows_test_once(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_lesson(notebooks)
    monkeypatch.setattr(course.runner, "NOTEBOOKS", notebooks)
    out = tmp_path / "sweep"
    code = course.main(["sweep", "07_fake", "-p", "strategy", "lora,full", "-p", "seed", "0,1", "--profile", "smoke",
                        "--jobs", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    runs = json.loads((out / "sweep.json").read_text())
    assert len(runs) == 4 and all(run["error"] == "" for run in runs)
    assert {(r["point"]["strategy"], r["point"]["seed"]) for r in runs} == {("lora", 0), ("lora", 1), ("full", 0),
                                                                          ("full", 1)}
    table = (out / "sweep.md").read_text().splitlines()
    assert table[2].startswith("| strategy=lora (picked) | 2 | 70.5% ± 0.7% |")
    assert "**50.5%** ± 0.7%" in table[2] and "not looked at" in table[3]
    assert (out / "sweep.png").stat().st_size > 0


def test_summaries_skip_failed_runs_and_an_empty_sweep_says_so():
    ok = sweeps.SweepRun({"lr": 1, "seed": 0}, course.Result("x", 2.0, {"val_accuracy": 0.5, "test_accuracy": 0.4}))
    failed = sweeps.SweepRun({"lr": 2, "seed": 0}, course.Result("x", 1.0, {}, error="boom"))
    [summary] = sweeps.summarize([ok, failed])
    assert summary.setting == {"lr": 1} and summary.val_mean == 0.5 and summary.val_spread == 0.0
    with pytest.raises(ValueError, match="No run of the sweep"):
        sweeps.sweep_table([])
