"""Student copies of the committed notebooks: solutions replaced by stubs that let Run All carry on, outputs
cleared, and a last cell that says which exercises are left.

Copies are made from git's HEAD, never from the working copy: a notebook an instructor has tried things in
(Lab autosaves) is named and its changes are left out. They are written to `notebooks/student/`, where
`make lab` shows them and `make lab-student` opens only them; a copy a student has changed is never replaced
unless asked (`--force`).
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import nbformat

from helpers.course.checks import ANSWERS
from helpers.course.notebook import NOTEBOOKS
from helpers.course.runner import course_notebooks

STUDENT_DIR = NOTEBOOKS / "student"
CARRY_ON_TAG = "raises-exception"  # JupyterLab's Run All and nbclient go on past an error in a cell tagged so
SOLUTION_BLOCK = re.compile(r"^([ \t]*)# BEGIN SOLUTION\n(.*?)^[ \t]*# END SOLUTION[^\n]*", re.S | re.M)
CHECKER_CALL = re.compile(r"\b(check_\w+)\(")
EXERCISE_TITLE = re.compile(r"Exercise\s*(\d+)\W*\s*([^\n]*)")


def bound_names(code: str) -> list[str]:
    """Names a piece of module-level code binds, in order (assignments, loop targets, imports, defs); none for
    code that is not plain Python (IPython magics)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []

    class Binder(ast.NodeVisitor):
        def visit_Name(self, node):
            if isinstance(node.ctx, ast.Store) and node.id not in found:
                found.append(node.id)

        def visit_FunctionDef(self, node):  # a new scope: only its name is bound here
            found.append(node.name)

        visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

        def visit_alias(self, node):
            found.append((node.asname or node.name).split(".")[0])

        def visit_Lambda(self, node):
            pass

        visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda

    Binder().visit(tree)
    return found


def stub(indent: str, solution: str, before: str, after: str) -> str:
    """What replaces one solution block: inside a function, `raise NotImplementedError`; at the top of a cell,
    each name the solution sets that is read later, set to None. Exercise checkers report both as not answered."""
    if indent:
        return f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError('write your solution here')"
    needed = [name for name in bound_names(solution) if re.search(rf"\b{name}\b", after)
              and not re.search(rf"^{name}\s*=", before, re.M)]
    return "\n".join(["# YOUR CODE HERE"] + [f"{name} = None  # replace None with your answer" for name in needed])


def strip_solutions(source: str, later: str = "") -> str:
    """Replace every `# BEGIN SOLUTION ... # END SOLUTION` block with a stub; `later` is the code of the cells
    that follow, which may read what the solution sets."""
    pieces, end = [], 0
    for block in SOLUTION_BLOCK.finditer(source):
        pieces += [source[end:block.start()], stub(block[1], block[2], source[:block.start()],
                                                     source[block.end():] + later)]
        end = block.end()
    return "".join(pieces) + source[end:]


def answer_names(source: str) -> set[str]:
    """The names an exercise cell's solutions give a value: what a solution binds at the top level of the cell,
    or the function whose body it is."""
    names = set()
    for block in SOLUTION_BLOCK.finditer(source):
        if block[1]:
            names.update(re.findall(r"^(?:async )?def (\w+)", source[:block.start()], re.M)[-1:])
        else:
            names.update(bound_names(block[2]))
    return names


def reads_any(source: str, names: set[str]) -> bool:
    """True when code `source` reads one of `names`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython syntax (magics): look for the words
        return any(re.search(rf"\b{name}\b", source) for name in names)
    return any(isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names
               for node in ast.walk(tree))


def exercise_label(cells: list, index: int, number: int) -> str:
    """'Exercise 2 · Write one attention head': the title of the nearest exercise prompt above cell `index`."""
    for cell in reversed(cells[:index]):
        found = cell.cell_type == "markdown" and EXERCISE_TITLE.search(cell.source)
        if found:
            title = re.sub(r"[*_`#]", "", found[2]).strip(" .")
            short = title if len(title) <= 60 else title[:60].rsplit(" ", 1)[0] + " ..."
            return f"Exercise {found[1]} · {short}" if short else f"Exercise {found[1]}"
    return f"Exercise {number}"


def student_copy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with solutions stubbed, outputs cleared, and a last cell that reports which exercises are
    left. Exercise cells, and later cells that read an exercise's answer, are tagged `raises-exception`."""
    cells = notebook.cells
    exercises, answers = {}, set()
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        solution = SOLUTION_BLOCK.search(cell.source)
        depends = solution or reads_any(cell.source, answers)
        if depends and CARRY_ON_TAG not in cell.metadata.get("tags", []):
            cell.metadata["tags"] = cell.metadata.get("tags", []) + [CARRY_ON_TAG]
        if depends and not solution:  # what this cell computes depends on an answer too
            answers |= set(bound_names(cell.source))
        if solution:
            answers |= answer_names(cell.source)
            later = "\n".join(c.source for c in cells[index + 1:] if c.cell_type == "code")
            checker_text = cell.source + "\n" + next((c.source for c in cells[index + 1:] if c.cell_type == "code"), "")
            checker = CHECKER_CALL.search(checker_text)
            if checker:
                exercises[checker[1]] = exercise_label(cells, index, len(exercises) + 1)
            cell.source = strip_solutions(cell.source, later)
        cell.outputs, cell.execution_count = [], None
    if exercises:
        cells.append(nbformat.v4.new_markdown_cell(
            "## Your exercises\nRun the cell below any time: it says which exercises are still to do.",
            id="exercises-left-prompt"))
        cells.append(nbformat.v4.new_code_cell(
            f"from helpers.course.student import exercises_left\n\n"
            f"exercises_left({json.dumps(exercises, indent=4, ensure_ascii=False)});",
            id="exercises-left"))
    return notebook


def exercises_left(exercises: dict[str, str]) -> list[str]:
    """Print which exercises (checker name -> label) are right and which are left, from the checkers' latest
    answers in this kernel; return the labels left."""
    state = {"unanswered": "not answered yet", "not yet": "not right yet"}
    left = [f"{label} ({state.get(ANSWERS.get(name), 'checker not run yet')})" for name, label in exercises.items()
            if ANSWERS.get(name) != "right"]
    done = len(exercises) - len(left)
    print(f"{done} of {len(exercises)} exercises right." + (" Left: " + "; ".join(left) + "." if left else ""))
    return left


def git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)


def committed_text(path: Path) -> str | None:
    """The notebook as committed at HEAD; '' when it is not committed; None outside a git checkout."""
    try:
        top = git(path.parent, "rev-parse", "--show-toplevel")
    except FileNotFoundError:  # no git on this machine
        return None
    if top.returncode:
        return None
    relative = path.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    shown = git(path.parent, "show", f"HEAD:{relative}")
    return shown.stdout if shown.returncode == 0 else ""


def source_for_copy(path: Path) -> tuple[str | None, str]:
    """The text a student copy of `path` is made from (None: leave it out) and a note for the instructor."""
    committed = committed_text(path)
    if committed is None:
        return path.read_text(encoding="utf-8"), f"{path.name}: not in a git checkout, copied as it is on disk"
    if committed == "":
        return None, f"{path.name} is not committed: left out (commit it to hand it out)"
    if committed != path.read_text(encoding="utf-8"):
        return committed, (f"{path.name} has changes that are not committed (`git diff {path.name}`): "
                           "the student copy is made from the last commit, without them")
    return committed, ""


def make_student_copies(out: Path = STUDENT_DIR, selection=None, force: bool = False) -> list[Path]:
    """Student copies of the committed notebooks in `out`, one line printed per notebook left out, changed
    since its last commit, or kept because its copy in `out` was changed (`force` replaces it); returns the
    files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks(selection):
        text, note = source_for_copy(path)
        if note:
            print(note)
        if text is None:
            continue
        copy = nbformat.writes(student_copy(nbformat.reads(text, as_version=4))) + "\n"  # as nbformat.write
        target = out / path.name
        if target.exists() and not force and target.read_text(encoding="utf-8") != copy:
            print(f"{target} is kept: it differs from a fresh copy (a student's work?); --force replaces it")
            continue
        target.write_text(copy, encoding="utf-8")
        written.append(target)
    return written
