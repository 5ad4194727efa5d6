"""`python -m helpers.course tidy`: the kernel metadata JupyterLab would write, the Colab badge and the Colab install
cell, so that opening a notebook through Jupyter's own machinery changes no byte. Tested on copies; the last test
checks the committed notebooks themselves."""
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers.course import colab, tidy

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def kernel():
    """kernelspec and language_info of this environment's python3 kernel (one kernel started for the module)."""
    return tidy.kernel_metadata()


def open_and_save_as_jupyterlab_does(folder: Path, name: str, kernel: dict) -> None:
    """What JupyterLab does to a notebook it opens and autosaves: read it through the server's contents manager,
    set the kernelspec and language_info of the kernel it starts, write it back through the contents manager."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    manager = FileContentsManager(root_dir=str(folder))
    model = manager.get(name, content=True, type="notebook")
    model["content"].metadata.update(kernel)
    manager.save({"type": "notebook", "format": "json", "content": model["content"]}, name)


@pytest.fixture
def tidied(tmp_path, kernel):
    for path in NOTEBOOKS:
        shutil.copy(path, tmp_path / path.name)
        notebook = tidy.tidy(nbformat.read(path, as_version=4), path.name, kernel)
        nbformat.write(notebook, tmp_path / path.name)
    return tmp_path


def test_metadata_badge_and_install_cell(tidied, kernel):
    notebook = nbformat.read(tidied / "02_freezing.ipynb", as_version=4)
    assert notebook.metadata.kernelspec == kernel["kernelspec"] and notebook.metadata.language_info.version
    title, badge, *_ = notebook.cells[0].source.splitlines()
    assert title.startswith("# 02 · ") and badge == colab.badge("02_freezing.ipynb")
    assert f"/{colab.COURSE_REPOSITORY}/blob/{colab.COURSE_BRANCH}/notebooks/02_freezing.ipynb" in badge
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.tags and code[1].metadata.tags == [colab.INSTALL_TAG]
    assert code[1].source == colab.install_cell()


def test_tidying_twice_changes_nothing(tidied, kernel):
    before = (tidied / "00_setup.ipynb").read_bytes()
    again = tidy.tidy(nbformat.read(tidied / "00_setup.ipynb", as_version=4), "00_setup.ipynb", kernel)
    assert (nbformat.writes(again) + "\n").encode() == before


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_opening_a_tidied_notebook_changes_no_byte(tidied, kernel, path):
    before = (tidied / path.name).read_bytes()
    open_and_save_as_jupyterlab_does(tidied, path.name, kernel)
    assert (tidied / path.name).read_bytes() == before


def test_an_untidy_notebook_is_rewritten_on_open(tmp_path, kernel):
    """The check above can fail: a notebook naming the kernel "Python 3" is rewritten as soon as Lab saves it."""
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    notebook.metadata.kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(notebook, tmp_path / "old.ipynb")
    before = (tmp_path / "old.ipynb").read_bytes()
    open_and_save_as_jupyterlab_does(tmp_path, "old.ipynb", kernel)
    assert (tmp_path / "old.ipynb").read_bytes() != before


def test_the_install_cell_does_nothing_outside_colab(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = tmp_path / "kit"
    env = {k: v for k, v in __import__("os").environ.items() if k != colab.COLAB_MARKER}
    done = subprocess.run([sys.executable, "-c", colab.install_cell(url=str(tmp_path / "nowhere"), folder=str(folder))],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout == done.stderr == "" and not folder.exists()


def test_the_readme_badges_use_the_one_repository_setting():
    text = README.read_text()
    for path in NOTEBOOKS:
        assert colab.badge(path.name) in text, f"README: no Colab badge for {path.name} with COURSE_REPOSITORY"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_committed_notebooks_are_tidy(path, kernel):
    """`python -m helpers.course tidy` has been run over the notebooks and changes nothing."""
    text = path.read_text(encoding="utf-8")
    tidied = tidy.tidy(nbformat.reads(text, as_version=4), path.name, kernel)
    assert nbformat.writes(tidied) + "\n" == text, f"run `python -m helpers.course tidy {path.stem}`"
