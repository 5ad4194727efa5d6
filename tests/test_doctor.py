"""`python -m helpers.course doctor`: one line per check, a fix for each red one, exit status 1 when the course
cannot run; a missing Jupyter, a kernel of another environment, a disabled widget extension are each one red line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.course import doctor

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["python", "packages", "kernel", "widgets", "device", "disk", "network", "write"]


def run_doctor(*args, env=None, before="") -> subprocess.CompletedProcess:
    """The doctor in a fresh interpreter, `before` run first (e.g. to make a package unimportable)."""
    code = f"{before}\nimport sys\nfrom helpers.course.cli import main\nsys.exit(main(['doctor', *{list(args)!r}]))"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def test_this_environment_is_ready_one_line_per_check():
    done = run_doctor()
    lines = [line for line in done.stdout.splitlines() if not line.startswith("      -> ")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[1] for line in lines] == NAMES
    assert not [line for line in lines if line.startswith("FIX")] and done.stderr == ""


def test_without_jupyter_the_kernel_and_widget_lines_are_red_with_the_fix():
    hide = "import sys\nfor name in ('jupyter_client', 'jupyter_core', 'jupyterlab_server'): sys.modules[name] = None"
    done = run_doctor(before=hide)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    red = [line for line in done.stdout.splitlines() if line.startswith("FIX")]
    assert [line.split()[1] for line in red] == ["kernel", "widgets"]
    assert "Jupyter is not installed in this environment" in red[0]
    assert "make install" in done.stdout and "2 of 8 checks need a fix" in done.stdout


def test_a_kernel_that_runs_another_python_is_red(tmp_path, monkeypatch):
    kernel = tmp_path / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps(
        {"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before this environment's own kernels
    check = doctor.check_kernel()
    assert check.status == doctor.FAIL
    assert check.detail == f"kernel 'python3' ({kernel}) runs /usr/bin/python3, not this environment"
    assert "ipykernel install --user" in check.fix


def test_a_disabled_widget_extension_is_red(tmp_path, monkeypatch):
    (tmp_path / "labconfig").mkdir()
    (tmp_path / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {doctor.WIDGETS_EXTENSION: True}}))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    check = doctor.check_widgets()
    assert check.status == doctor.FAIL and check.detail == "the ipywidgets extension is disabled in JupyterLab"
    assert check.fix == f"jupyter labextension enable {doctor.WIDGETS_EXTENSION}"


def test_the_brief_form_is_one_line_when_all_is_well(capsys):
    assert doctor.doctor(brief=True, colour=False) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("doctor: all 8 checks passed")


def test_versions_other_than_the_tested_ones_are_a_note(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\ntorch==0.0.1\nnumpy==0.0.2\nnot-a-dependency==1.0\n")
    check = doctor.check_packages(constraints)
    assert check.status == doctor.WARN
    assert check.detail.startswith("2 differ from constraints.txt: torch ") and "(tested: 0.0.1)" in check.detail


def test_a_cache_folder_that_cannot_be_written_is_red(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    check = doctor.check_write_access({"build/": tmp_path / "build", "hub cache": blocker / "hub"})
    assert check.status == doctor.FAIL and check.detail == f"cannot write to hub cache ({blocker / 'hub'})"
    assert doctor.check_write_access({"build/": tmp_path / "build"}).status == doctor.OK


@pytest.mark.parametrize("line", ["python", "device"])
def test_each_line_says_what_it_found(line):
    check = {"python": doctor.check_python, "device": doctor.check_device}[line]()
    found = {"python": f"Python {sys.version.split()[0]}", "device": f"{os.cpu_count()} CPU cores"}[line]
    assert found in check.detail
