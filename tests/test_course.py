import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import course


def write_notebook(path, *sources):
    cells = [new_markdown_cell("# demo")] + [new_code_cell(s) for s in sources]
    cells[1].metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_parameters_are_checked_before_anything_runs():
    assert course.parse_overrides([["epochs", "3"], ["lr", "5e-4"], ["model_name", "tiny-vit"]]) == {
        "epochs": 3, "lr": 5e-4, "model_name": "tiny-vit"}
    with pytest.raises(ValueError, match="Unknown parameter 'epoch'.*epochs"):
        course.parse_overrides([["epoch", "3"]])
    with pytest.raises(ValueError, match="lr must be greater than 0"):
        course.parse_overrides([["lr", "0"]])


def test_unknown_notebook_names_the_choices():
    with pytest.raises(ValueError, match="No notebook 'nope'.*00_setup"):
        course.course_notebooks(["nope"])


def test_a_failing_notebook_is_named_with_its_cell_and_records_survive(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "00_ok.ipynb", 'profile = "auto"\noverrides = {}',
                   "from helpers import course\ncourse.record(answer=42, profile=profile)")
    write_notebook(notebooks / "01_broken.ipynb", 'profile = "auto"\noverrides = {}',
                   "from helpers import course\ncourse.record(before=1.5)", "raise ValueError('boom')")
    monkeypatch.setattr(course.runner, "NOTEBOOKS", notebooks)
    exit_code = course.main(["run", "--profile", "smoke", "--out", str(tmp_path / "build")])
    assert exit_code == 1
    assert "01_broken" in capsys.readouterr().err
    summary = json.loads((tmp_path / "build" / "summary.json").read_text())
    ok, broken = summary
    assert ok["error"] == "" and ok["records"] == {"answer": 42, "profile": "smoke"}
    assert "cell 4 of" in broken["error"] and "raise ValueError('boom')" in broken["error"]  # 4: after papermill's
    assert "ValueError: boom" in broken["error"]  # injected-parameters cell
    assert broken["records"] == {"before": 1.5}
    table = (tmp_path / "build" / "summary.md").read_text()
    assert "| 00_ok | ok | smoke |" in table and "answer=42" in table and "FAILED" in table


def test_clean_for_commit_drops_injected_parameters_and_bookkeeping(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", 'profile = "auto"\noverrides = {}', "1 + 1")
    notebook = nbformat.read(path, as_version=4)
    injected = new_code_cell('profile = "cpu"')
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(2, injected)
    notebook.metadata["papermill"] = {"duration": 1}
    notebook.metadata["widgets"] = {"state": {}}
    nbformat.write(notebook, path)
    course.clean_for_commit(path)
    cleaned = nbformat.read(path, as_version=4)
    assert len(cleaned.cells) == 3 and "papermill" not in cleaned.metadata and "widgets" not in cleaned.metadata


def test_student_copies_lose_solutions_and_outputs(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    solution = "def f(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION\n\ncheck(f)"
    path = write_notebook(notebooks / "01_x.ipynb", 'profile = "auto"\noverrides = {}', solution)
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[2].outputs = [nbformat.v4.new_output("stream", text="Correct")]
    notebook.cells[2].execution_count = 2
    nbformat.write(notebook, path)
    monkeypatch.setattr(course.runner, "NOTEBOOKS", notebooks)
    [copy] = course.make_student_copies(tmp_path / "student")
    cell = nbformat.read(copy, as_version=4).cells[2]
    assert "return 2 * x" not in cell.source and "SOLUTION" not in cell.source
    assert "    # YOUR CODE HERE\n    raise NotImplementedError" in cell.source
    assert cell.source.startswith("def f(x):") and cell.source.endswith("check(f)")
    assert cell.outputs == [] and cell.execution_count is None
    compile(cell.source, "student", "exec")  # still valid Python


def test_the_run_survives_a_dead_kernel_and_a_hanging_cell_records_both_and_goes_on(tmp_path, monkeypatch, capsys):
    notebooks, photos = tmp_path / "notebooks", tmp_path / "photos"
    notebooks.mkdir()
    parameters = 'profile = "auto"\noverrides = {}'
    write_notebook(notebooks / "00_dies.ipynb", parameters, "import os\nos._exit(3)  # as an out-of-memory kill would")
    write_notebook(notebooks / "01_hangs.ipynb", parameters, "import time\ntime.sleep(600)")
    write_notebook(notebooks / "02_ok.ipynb", parameters,
                   "from helpers import course\ncourse.record(profile=profile, dataset=overrides['dataset_name'], answer=42)")
    monkeypatch.setattr(course.runner, "NOTEBOOKS", notebooks)
    monkeypatch.chdir(tmp_path)  # where the user typed the command: photos/ is here, not in notebooks/
    exit_code = course.main(["run", "--profile", "smoke", "--cell-timeout", "20", "--out", str(tmp_path / "build"),
                             "-p", "dataset_name", "imagefolder:photos"])
    assert exit_code == 1
    assert "2 notebook(s) failed: 00_dies, 01_hangs" in capsys.readouterr().err
    table = (tmp_path / "build" / "summary.md").read_text()
    assert "| 00_dies | FAILED: the kernel died in cell 3 of " in table and "(starting 'import os')" in table
    assert "| 01_hangs | FAILED: cell 3 of " in table and "ran past the cell timeout of 20 s" in table
    assert "| 02_ok | ok | smoke |" in table and "answer=42" in table
    summary = json.loads((tmp_path / "build" / "summary.json").read_text())
    assert summary[2]["records"]["dataset"] == f"imagefolder:{photos.resolve()}"


def test_bad_parameter_values_are_one_error_line(capsys):
    for argv, message in ((["-p", "epochs", "abc"], "epochs must be a whole number, got 'abc'"),
                          (["-p", "lr", "1e999"], "lr must be a finite number, got inf"),
                          (["-p", "seed", "-3"], "seed must be in [0, 4294967295], got -3")):
        assert course.main(["run", *argv]) == 2
        assert capsys.readouterr().err == f"error: Bad setting: {message}.\n"


def test_relative_paths_are_taken_from_where_the_command_was_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_model").mkdir()
    overrides = course.parse_overrides([["dataset_name", "imagefolder:photos"], ["model_name", "my_model"]])
    assert overrides == {"dataset_name": f"imagefolder:{tmp_path.resolve() / 'photos'}",
                         "model_name": str(tmp_path.resolve() / "my_model")}
    hub_id = "google/vit-base-patch16-224-in21k"  # not a folder here: a hub id stays as it is
    assert course.parse_overrides([["model_name", hub_id], ["dataset_name", "imagefolder:/data/x"]]) == {
        "model_name": hub_id, "dataset_name": "imagefolder:/data/x"}


def test_cell_timeout_defaults_grow_with_the_profile(monkeypatch):
    timeouts = [course.runner.cell_timeout(name) for name in ("smoke", "cpu", "gpu")]
    assert timeouts == sorted(timeouts) and timeouts[0] >= 60
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    assert course.runner.cell_timeout("auto") == timeouts[1]
