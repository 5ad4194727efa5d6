"""Student copies of the notebooks: solutions replaced by a prompt, outputs cleared."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

from helpers.course.runner import course_notebooks

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
