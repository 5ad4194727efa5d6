"""`python -m helpers.course tidy`: what the committed notebooks carry so that opening one changes nothing and
Colab can run it.

- Kernel metadata exactly as JupyterLab writes it for the kernel the kit installs (the kernelspec's name,
  display name and language; `language_info` from the kernel itself), so Lab has nothing to rewrite on open.
- The "Open in Colab" badge under the title of the first cell.
- The Colab install cell (`colab.install_cell`) right after the parameters cell, tagged `colab-install`.
Running it again changes nothing.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from helpers.course import colab
from helpers.course.runner import course_notebooks

BADGE_PREFIX = "[![Open In Colab]"


def kernel_metadata(kernel_name: str = "python3") -> dict:
    """`kernelspec` and `language_info` as JupyterLab stores them for `kernel_name` in this environment: the
    kernelspec from Jupyter's registry, language_info from a running kernel's own answer."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    manager, client = start_new_kernel(kernel_name=kernel_name, transport_encryption="auto")  # no TCP warning
    try:
        reply = client.kernel_info(reply=True, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": kernel_name},
            "language_info": reply["content"]["language_info"]}


def with_badge(source: str, notebook_name: str) -> str:
    """The first cell's Markdown with the Colab badge on the line after the title (replacing an older badge)."""
    lines = [line for line in source.splitlines() if not line.startswith(BADGE_PREFIX)]
    return "\n".join(lines[:1] + [colab.badge(notebook_name)] + lines[1:])


def install_cell() -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(colab.install_cell(), id=colab.INSTALL_TAG)
    cell.metadata["tags"] = [colab.INSTALL_TAG]
    return cell


def tidy(notebook: nbformat.NotebookNode, name: str, metadata: dict) -> nbformat.NotebookNode:
    """`notebook` (named `name`) with `metadata` (from `kernel_metadata`), the badge and the install cell."""
    notebook.metadata.update(metadata)
    first = notebook.cells[0]
    if first.cell_type == "markdown":
        first.source = with_badge(first.source, name)
    old = [i for i, c in enumerate(notebook.cells) if colab.INSTALL_TAG in c.metadata.get("tags", [])]
    cell = notebook.cells.pop(old[0]) if old else install_cell()
    cell.source = colab.install_cell()
    parameters = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    notebook.cells.insert(parameters + 1, cell)
    return notebook


def tidy_notebooks(selection=None) -> list[Path]:
    """Tidy the course notebooks in place; returns those whose file changed."""
    metadata = kernel_metadata()
    changed = []
    for path in course_notebooks(selection):
        before = path.read_text(encoding="utf-8")
        notebook = tidy(nbformat.reads(before, as_version=4), path.name, metadata)
        after = nbformat.writes(notebook) + "\n"
        if after != before:
            path.write_text(after, encoding="utf-8")
            changed.append(path)
    return changed
