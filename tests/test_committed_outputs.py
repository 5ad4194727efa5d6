"""The outputs committed with every notebook are what a reader sees on the repository page: no progress bar frozen
at its first frame, no bookkeeping lines, no machine paths, no tracebacks, no table printed twice.

`noise()` lists each problem with its cell and the text around it, so a failure says where to look.
"""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))

PROBLEMS = {
    "a progress bar frozen at its first frame": re.compile(r"\b0%\|"),
    "a bookkeeping line": re.compile(r"^recorded: ", re.MULTILINE),
    "a temporary-folder path": re.compile(r"/tmp/|/var/folders/|\\AppData\\Local\\Temp"),
    "a home-folder path": re.compile(r"(?<![\w.])(/root/|/home/\w+|/Users/\w+)"),
    "an HTML table (the kit shows its tables as Markdown, so this is a library's copy)": re.compile(r"<table"),
}


def output_texts(output) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return ["\n".join(output.traceback)]
    data = output.get("data", {})
    return [data[kind] for kind in ("text/plain", "text/markdown", "text/html") if isinstance(data.get(kind), str)]


def noise(notebook) -> list[tuple[int, str, str]]:
    """Every problem in the notebook's outputs, as (cell index, what, the text around it)."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append((index, "an error output", f"{output.ename}: {output.evalue}"))
            for text in output_texts(output):
                for problem, pattern in PROBLEMS.items():
                    for match in pattern.finditer(text):
                        found.append((index, problem, text[max(0, match.start() - 30):match.end() + 30]))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_hold_no_noise(path):
    problems = noise(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name} has {len(problems)} problem(s) in its saved outputs:\n" + "\n".join(
        f"cell {cell}: {what} ({context!r})" for cell, what, context in problems)


def test_the_noise_check_finds_each_kind_of_problem():
    bar = nbformat.v4.new_output("display_data", data={"text/plain": "epoch 1/15:   0%|          | 0/20"})
    record = nbformat.v4.new_output("display_data", data={"text/plain": "recorded: profile=cpu"})
    paths = nbformat.v4.new_output("stream", text="cached in /root/.cache/x and /tmp/lesson05-abc/ddp\n")
    table = nbformat.v4.new_output("display_data", data={"text/html": "<table><tr><td>1</td></tr></table>"})
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=["ValueError: boom"])
    clean = nbformat.v4.new_output("stream", text="ablation: 12/12 in 03:05, 100% done; saved in notebooks/\n")
    cells = [nbformat.v4.new_code_cell(outputs=[output]) for output in (bar, record, paths, table, error, clean)]
    found = {(cell, what.split()[1]) for cell, what, _ in noise(nbformat.v4.new_notebook(cells=cells))}
    assert found == {(0, "progress"), (1, "bookkeeping"), (2, "home-folder"), (2, "temporary-folder"),
                     (3, "HTML"), (4, "error")}
