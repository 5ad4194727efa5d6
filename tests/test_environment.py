"""The conda environment file and the packaging agree (conda itself is not installed here)."""
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_is_python_311_pip_and_this_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    dependencies = env["dependencies"]
    assert "python=3.11" in dependencies and "pip" in dependencies
    pip_section = next(item["pip"] for item in dependencies if isinstance(item, dict))
    assert pip_section == ["-e .[dev]"]


def test_pip_section_installs_this_package():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-e", ".[dev]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert result.returncode == 0, result.stderr
    assert f"Would install {name}" in result.stdout


def test_dependencies_are_ranges_and_constraints_pin_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch>"))
    assert "==" not in torch_spec  # an installed torch that fits is kept
    canonical = lambda name: name.strip().lower().replace("_", "-")  # noqa: E731
    pins = dict(map(canonical, line.split("==")) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = canonical(requirement.split(">")[0].split("=")[0].split("<")[0])
        assert name in pins, f"{name} is not pinned in constraints.txt"
