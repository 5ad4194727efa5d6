"""What keeps a saved notebook quiet: progress bars that end as one line of text when headless, `record()` that
writes to the runner's file instead of the notebook, and timings that come as a median with the machine's load."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
from tqdm.auto import tqdm as live_bar

from helpers import course, timing
from helpers.progress import FinalLine, progress_bar


def test_headless_bars_print_one_final_line_and_bars_that_do_not_stay_print_nothing(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    bar = progress_bar(range(12), desc="ablation runs")
    for _ in bar:
        bar.set_postfix_str("none")
    for _ in progress_bar(range(5), desc="epoch 1/15", leave=False):
        pass
    for _ in progress_bar(range(5), desc="off", disable=True):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablation runs: 12/12 in ") and "%" not in lines[0]


def test_a_bar_over_an_iterator_of_unknown_length_ends_with_its_count(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    bar = progress_bar(total=None, desc="Trainer epochs")
    bar.update(3)
    bar.close()
    bar.close()  # closing twice prints once
    assert capsys.readouterr().out.startswith("Trainer epochs: 3/? in ")


def test_in_jupyterlab_the_bar_is_tqdms_live_one(monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)
    bar = progress_bar(range(2), desc="live")
    assert isinstance(bar, live_bar) and not isinstance(bar, FinalLine)
    bar.close()


def test_record_appends_json_lines_to_the_runners_file_and_shows_nothing(tmp_path, monkeypatch, capsys):
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv(course.RECORDS_FILE, str(records))
    course.record(accuracy=0.5, profile="cpu")
    course.record(accuracy=0.75)
    assert capsys.readouterr().out == ""
    assert [json.loads(line) for line in records.read_text().splitlines()] == [
        {"accuracy": 0.5, "profile": "cpu"}, {"accuracy": 0.75}]
    assert course.read_records(records) == {"accuracy": 0.75, "profile": "cpu"}  # later records win
    assert course.read_records(tmp_path / "none.jsonl") == {}


def test_without_a_runner_record_keeps_the_values_in_the_kernel(monkeypatch):
    monkeypatch.delenv(course.RECORDS_FILE, raising=False)
    course.record(answer=42)
    assert course.RECORDED["answer"] == 42


@pytest.mark.parametrize("inside_a_run", [False, True])
def test_an_executed_notebook_holds_no_bookkeeping_line_and_its_records_are_collected(tmp_path, monkeypatch,
                                                                                      inside_a_run):
    outer = tmp_path / "outer.jsonl"  # a sweep runs notebooks from a notebook that records results of its own
    if inside_a_run:
        monkeypatch.setenv(course.RECORDS_FILE, str(outer))
    else:
        monkeypatch.delenv(course.RECORDS_FILE, raising=False)
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)  # a live kernel (JupyterLab) that runs notebooks itself
    cells = [nbformat.v4.new_markdown_cell("# demo"), nbformat.v4.new_code_cell('profile = "auto"\noverrides = {}'),
             nbformat.v4.new_code_cell("from helpers import course, widgets\n"
                                       "course.record(answer=42, headless=widgets.is_headless())\nprint('done')")]
    cells[1].metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(notebook, tmp_path / "demo.ipynb")
    result = course.execute(tmp_path / "demo.ipynb", tmp_path / "out.ipynb", {"profile": "smoke"})
    assert result.ok and result.records == {"answer": 42, "headless": True}
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [output.get("text") for output in executed.cells[-1].outputs] == ["done\n"]
    assert os.environ.get(course.RECORDS_FILE) == (str(outer) if inside_a_run else None)
    assert "COURSE_HEADLESS" not in os.environ  # the runner's kernel ran headless, this process stays live


def test_notebooks_run_side_by_side_keep_their_records_apart(tmp_path):
    """A sweep runs notebooks in threads of one process: each run's records must be its own."""
    def recording(value):
        cells = [nbformat.v4.new_code_cell('profile = "auto"\noverrides = {}'),
                 nbformat.v4.new_code_cell(f"from helpers import course\ncourse.record(run={value})")]
        cells[0].metadata["tags"] = ["parameters"]
        path = tmp_path / f"run{value}.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3", "language": "python"}}), path)
        return path

    paths = [recording(value) for value in range(4)]
    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(lambda path: course.execute(path, path.with_suffix(".out.ipynb"), {}), paths))
    assert [result.records for result in results] == [{"run": value} for value in range(4)]


def test_median_of_repeats_ignores_one_slow_outlier():
    values = iter([1.0, 9.0, 1.2])
    assert timing.median_of_repeats(lambda: next(values), repeats=3) == 1.2
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        timing.median_of_repeats(lambda: 1.0, repeats=0)


def test_machine_load_names_the_cores_and_the_load():
    text = timing.machine_load()
    assert text.split(",")[0].endswith("cores") and "load average" in text
