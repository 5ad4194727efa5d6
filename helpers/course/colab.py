"""Google Colab: the "Open in Colab" badge, and the install cell each notebook runs first on Colab.

`COURSE_REPOSITORY` is the one setting: the GitHub repository the badges open and the install cell clones.
The install cell only acts on Colab (its `COLAB_RELEASE_TAG` environment variable): it clones the kit and
runs this file as a script, which installs the kit with Colab's own torch and torchvision pinned, so nothing
reinstalls a multi-GB torch, and says what it did and which profile the notebooks will run. Until the install
is done only the standard library is used: the kit's own imports need what it installs.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile

COURSE_REPOSITORY = "your-org/vit-course"  # owner/name on GitHub: set it when you publish the kit
COURSE_BRANCH = "main"
COLAB_FOLDER = "/content/vit-course"
COLAB_MARKER = "COLAB_RELEASE_TAG"  # set in every Colab runtime
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_TAG = "colab-install"  # the tag of the install cell in each notebook
KEPT = ("torch", "torchvision")  # Colab's builds, matched to its CUDA: never reinstalled


def repository_url(repository: str = COURSE_REPOSITORY) -> str:
    return f"https://github.com/{repository}"


def badge(notebook_name: str, repository: str = COURSE_REPOSITORY) -> str:
    """The Markdown of the "Open in Colab" badge for `notebooks/<notebook_name>`."""
    target = f"https://colab.research.google.com/github/{repository}/blob/{COURSE_BRANCH}/notebooks/{notebook_name}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({target})"


def install_cell(url: str | None = None, folder: str = COLAB_FOLDER) -> str:
    """The source of the install cell: on Colab, clone the kit (once) and run this file on it; elsewhere nothing."""
    return "\n".join([
        "# On Colab: fetch the course kit and install it, keeping Colab's torch. Anywhere else: nothing to do.",
        "import os, subprocess, sys",
        f"kit = {folder!r}",
        f'if "{COLAB_MARKER}" in os.environ:',
        "    if not os.path.isdir(kit):",
        f"        subprocess.run(['git', 'clone', '--depth', '1', {url or repository_url()!r}, kit], check=True)",
        "    subprocess.run([sys.executable, f'{kit}/helpers/course/colab.py', kit])",
        "    sys.path.insert(0, kit)",
    ])


def installed_versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            versions[name] = dist.version
    return versions


def pip_install(folder: str, pins: list[str]) -> subprocess.CompletedProcess:
    """`pip install -e folder` with `pins` as constraints, so pip keeps those versions or stops."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(pins) + "\n")
    try:
        return subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "-c", constraints.name, "-e", folder], capture_output=True, text=True)
    finally:
        os.unlink(constraints.name)


def install_kit(folder: str = COLAB_FOLDER) -> bool:
    """Install the kit in `folder` into this (Colab) environment without touching its torch or torchvision, and
    print one line on what changed; False (and one sentence) when pip failed."""
    before = installed_versions()
    pins = [f"{name}=={before[name]}" for name in KEPT if name in before]
    result = pip_install(folder, pins)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"Could not install the kit while keeping Colab's {', '.join(pins) or 'packages'}: pip said {last!r}. "
              f"Open an issue at {repository_url()} with this line.")
        return False
    importlib.invalidate_caches()
    after = installed_versions()
    changed = sorted(name for name in after if before.get(name) != after[name])
    kept = ", ".join(pins) or "no torch installed"
    print(f"Colab: installed the course kit from {folder} ({len(changed)} packages added or upgraded); "
          f"kept {kept}.")
    return True


def profile_line() -> str:
    """Which profile `auto` picks on this runtime, and for a GPU the plan it trains with."""
    import torch

    from helpers.course.doctor import device_plan_line

    if not torch.cuda.is_available():
        return ("No GPU in this session, so the notebooks run the cpu profile (minutes each); for the gpu profile "
                "choose Runtime > Change runtime type > T4 GPU and run this cell again.")
    return f"GPU: {device_plan_line()}"


if __name__ == "__main__":  # the install cell: python helpers/course/colab.py FOLDER
    if install_kit(sys.argv[1]):
        sys.path[0] = sys.argv[1]  # the kit instead of this file's folder, whose modules could shadow others
        print(profile_line())
