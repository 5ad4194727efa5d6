"""Student copies: made from the committed notebooks, stubs that let Run All carry on, a last cell that lists the
exercises left, and a student's own work never overwritten."""
import subprocess
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.course import checks, runner, student
from helpers.course.checks import UNANSWERED

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK = '''from helpers.course.checks import checker

@checker
def check_double(double):
    assert double(3) == 6, "double(3) should be twice 3"
    print("Correct: double works.")

@checker
def check_total(total):
    assert total == 10, "add up all four numbers"
    print("Correct: 10.")'''
EXERCISE_1 = "def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION\n\n\ncheck_double(double);"
EXERCISE_2 = "numbers = [1, 2, 3, 4]\n# BEGIN SOLUTION\ntotal = 0\nfor n in numbers:\n    total += n\n# END SOLUTION"


def lesson(profile='"auto"') -> nbformat.NotebookNode:
    parameters = new_code_cell(f"profile = {profile}\noverrides = {{}}", metadata={"tags": ["parameters"]})
    return new_notebook(cells=[
        new_markdown_cell("# 01 · A lesson"), parameters, new_code_cell(CHECK),
        new_markdown_cell("### Exercise 1 · Double it\nWrite `double(x)`."), new_code_cell(EXERCISE_1),
        new_code_cell("print('uses the answer:', double(5))"),
        new_markdown_cell("**Exercise 2.** Add them up."), new_code_cell(EXERCISE_2),
        new_code_cell("check_total(total);"),
        new_code_cell("print('the lesson goes on')"),
    ])


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A git checkout with one committed lesson in notebooks/, which `course_notebooks` lists."""
    notebooks = tmp_path / "repo" / "notebooks"
    notebooks.mkdir(parents=True)
    nbformat.write(lesson(), notebooks / "01_lesson.ipynb")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lesson")
    monkeypatch.setattr(runner, "NOTEBOOKS", notebooks)
    return notebooks


def copy_cells(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells


def test_a_copy_is_made_from_the_last_commit_and_names_a_changed_working_copy(course, tmp_path, capsys):
    changed = lesson(profile='"smoke"')
    changed.cells[4].source = "def double(x):\n    return x + x  # typed without the markers\n\ncheck_double(double)"
    nbformat.write(changed, course / "01_lesson.ipynb")
    [copy] = student.make_student_copies(tmp_path / "student")
    cells = copy_cells(copy)
    assert cells[1].source.startswith('profile = "auto"') and "x + x" not in cells[4].source
    assert "01_lesson.ipynb has changes that are not committed" in capsys.readouterr().out


def test_a_notebook_that_is_not_committed_is_left_out(course, tmp_path, capsys):
    nbformat.write(lesson(), course / "02_new.ipynb")
    written = student.make_student_copies(tmp_path / "student")
    assert [p.name for p in written] == ["01_lesson.ipynb"]
    assert "02_new.ipynb is not committed: left out" in capsys.readouterr().out


def test_outside_git_the_notebooks_are_copied_as_they_are(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(lesson(), notebooks / "01_lesson.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS", notebooks)
    assert len(student.make_student_copies(tmp_path / "student")) == 1
    assert "not in a git checkout" in capsys.readouterr().out


def test_stubs_replace_solutions_and_tag_what_may_raise(course, tmp_path):
    [copy] = student.make_student_copies(tmp_path / "student")
    cells = copy_cells(copy)
    function, loop = cells[4], cells[7]
    assert "raise NotImplementedError" in function.source and "2 * x" not in function.source
    assert function.source.endswith("check_double(double);")
    assert loop.source == "numbers = [1, 2, 3, 4]\n# YOUR CODE HERE\ntotal = None  # replace None with your answer"
    tagged = [i for i, c in enumerate(cells) if student.CARRY_ON_TAG in c.metadata.get("tags", [])]
    assert tagged == [4, 5, 7, 8]  # the exercises, and the cells that read their answers
    assert all(c.outputs == [] and c.execution_count is None for c in cells if c.cell_type == "code")
    assert "SOLUTION" not in "".join(c.source for c in cells)


def test_run_all_carries_on_and_the_last_cell_lists_the_exercises_left(course, tmp_path):
    from nbclient import NotebookClient

    [copy] = student.make_student_copies(tmp_path / "student")
    notebook = nbformat.read(copy, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    text = ["".join(o.get("text", "") for o in c.outputs) for c in notebook.cells if c.cell_type == "code"]
    assert text[2] == UNANSWERED + "\n" and text[5] == UNANSWERED + "\n"
    assert text[6] == "the lesson goes on\n"  # Run All got past both exercises
    assert text[-1] == ("0 of 2 exercises right. Left: Exercise 1 · Double it (not answered yet); "
                        "Exercise 2 · Add them up (not answered yet).\n")


def test_exercises_left_follows_the_checkers_latest_answers(monkeypatch, capsys):
    monkeypatch.setattr(checks, "ANSWERS", {"check_a": "right", "check_b": "not yet"})
    monkeypatch.setattr(student, "ANSWERS", checks.ANSWERS)
    left = student.exercises_left({"check_a": "Exercise 1", "check_b": "Exercise 2", "check_c": "Exercise 3"})
    assert left == ["Exercise 2 (not right yet)", "Exercise 3 (checker not run yet)"]
    assert capsys.readouterr().out.startswith("1 of 3 exercises right. Left: Exercise 2 (not right yet); ")


def test_a_copy_a_student_changed_is_kept_unless_forced(course, tmp_path, capsys):
    [copy] = student.make_student_copies(tmp_path / "student")
    work = nbformat.read(copy, as_version=4)
    work.cells[7].source = "total = sum(numbers)"
    nbformat.write(work, copy)
    assert student.make_student_copies(tmp_path / "student") == []
    assert "is kept: it differs from a fresh copy" in capsys.readouterr().out
    assert "sum(numbers)" in copy.read_text()
    assert student.make_student_copies(tmp_path / "student", force=True) == [copy]
    assert "sum(numbers)" not in copy.read_text()


def test_copies_of_an_unchanged_course_are_written_once(course, tmp_path):
    first = student.make_student_copies(tmp_path / "student")
    assert student.make_student_copies(tmp_path / "student") == first  # same bytes: rewritten, nothing kept


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_of_the_course_is_stubbed_and_listed(path):
    notebook = student.student_copy(nbformat.read(path, as_version=4))
    exercises = sum("# BEGIN SOLUTION" in c.source for c in nbformat.read(path, as_version=4).cells)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in code:  # still valid (IPython) Python
        compile(TransformerManager().transform_cell(cell.source), path.name, "exec")
    if exercises:
        last = code[-1].source
        assert last.startswith("from helpers.course.student import exercises_left")
        assert last.count("Exercise ") == exercises and last.count('"check_') == exercises
    assert not any("SOLUTION" in c.source for c in code)
