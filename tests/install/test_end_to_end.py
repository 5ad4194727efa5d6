"""End to end, with real wheels (GBs, minutes): `make test-bundle`, not part of `make test`.

1. A workshop bundle built here installs into a fresh clone's fresh venv with no index and no network (the
   installer runs on the bare Python, inside `unshare -n` where that works), and 00_setup then runs in smoke.
2. The Colab install cell, on a fresh venv that already has another supported torch (2.13.0, CPU), with Colab's
   environment marker set: the kit installs, torch is not reinstalled, and the cell says so and names the profile.

Set BUNDLE_WHEELS to a folder of wheels to pack instead of downloading them; COLAB_TORCH_WHEELS to where the
torch 2.13.0 wheel lies (default /opt/wheels). Timings and sizes are printed (run with -s).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.course import bundle, colab

ROOT = Path(__file__).resolve().parents[2]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the Python this venv was made from


def no_network_prefix() -> list[str]:
    """Run in a new network namespace (`unshare -n`: no network but the loopback, which kernels talk over) where
    this machine allows it, else as is."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    prefix = [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"] if unshare and ip else []
    if prefix and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
        return prefix
    return []


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    print(f"[{time.perf_counter() - started:.0f} s] {' '.join(map(str, command[:4]))} ... -> {done.returncode}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def fresh_clone(folder: Path) -> Path:
    run(["git", "clone", "--quiet", str(ROOT), str(folder)])
    return folder


def test_a_bundle_installs_offline_into_a_fresh_clone_and_runs_setup(tmp_path):
    started = time.perf_counter()
    wheels = os.environ.get("BUNDLE_WHEELS")
    manifest = bundle.build(tmp_path / "workshop.bundle", wheels=Path(wheels) if wheels else None)
    size = (tmp_path / "workshop.bundle").stat().st_size
    seconds = time.perf_counter() - started
    print(f"bundle: {len(manifest['files'])} files, {size / 1e9:.2f} GB, built in {seconds:.0f} s")

    kit = fresh_clone(tmp_path / "kit")
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))} | {"PIP_NO_INDEX": "1"}
    started = time.perf_counter()
    installed = run([*no_network_prefix(), BASE_PYTHON, str(kit / "helpers/course/bundle.py"), "install",
                     str(tmp_path / "workshop.bundle"), "--venv", str(kit / ".venv")], env=offline, cwd=kit)
    print(f"install, no network: {time.perf_counter() - started:.0f} s: {installed.stdout.strip()}")
    assert installed.stdout.startswith("Installed workshop.bundle in ")
    assert sorted(p.name for p in (kit / "notebooks" / "student").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

    python = str(kit / ".venv" / "bin" / "python")
    setup = run([*no_network_prefix(), python, "-m", "helpers.course", "run", "00_setup", "--profile", "smoke",
                 "--out", str(tmp_path / "out")], env=offline | {"HF_HUB_OFFLINE": "1"}, cwd=kit)
    assert "ok in" in setup.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary[0]["notebook"] == "00_setup" and not summary[0]["error"]
    doctor = run([python, "-m", "helpers.course", "doctor"], env=offline, cwd=kit)
    print(doctor.stdout)


@pytest.fixture
def colab_like_venv(tmp_path) -> Path:
    """A fresh venv that already holds torch 2.13.0 (CPU) and its torchvision, as Colab holds its own builds."""
    venv = tmp_path / "colab-venv"
    run([BASE_PYTHON, "-m", "venv", str(venv)])
    wheels = os.environ.get("COLAB_TORCH_WHEELS", "/opt/wheels")
    run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--find-links", wheels, "torch==2.13.0",
         "torchvision==0.28.0"])
    return venv


def torch_state(python: Path) -> dict:
    code = ("import importlib.metadata as m, json, os; d = m.distribution('torch'); "
            "print(json.dumps({'version': d.version, 'files': os.path.getmtime(d.locate_file('torch/__init__.py'))}))")
    return json.loads(run([str(python), "-c", code]).stdout)


def test_the_colab_cell_installs_the_kit_and_keeps_colabs_torch(colab_like_venv, tmp_path):
    python = colab_like_venv / "bin" / "python"
    before = torch_state(python)
    folder = tmp_path / "content" / "vit-course"
    cell = colab.install_cell(url=str(ROOT), folder=str(folder))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {colab.COLAB_MARKER: "release-colab_20260101"}
    started = time.perf_counter()
    done = run([str(python), "-c", cell], env=env, cwd=tmp_path)
    print(f"Colab cell: {time.perf_counter() - started:.0f} s\n{done.stdout}")
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith(f"Colab: installed the course kit from {folder}")
    assert f"kept torch=={before['version']}" in lines[-2]
    assert lines[-1].startswith("No GPU in this session, so the notebooks run the cpu profile")
    assert torch_state(python) == before  # same version, files untouched: not reinstalled
    imported = run([str(python), "-c", "import helpers, transformers; print(helpers.__file__)"], cwd=tmp_path, env=env)
    assert imported.stdout.strip().startswith(str(folder))
