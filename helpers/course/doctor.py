"""`python -m helpers.course doctor`: is this machine ready for the course? One line per check, green or red,
with the fix for each red one; the exit status is 1 when something blocks the course.

Checks: Python and package versions against `constraints.txt`; the Jupyter kernel registered and pointing at
this environment; the ipywidgets extension active in JupyterLab; device, memory and the plan the gpu profile
would use; disk space for the caches; the hub and what is cached; write access to `build/` and the caches.
`00_setup` runs it in brief form (`doctor(brief=True)`): only the red lines, and one summary line.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helpers import profiles
from helpers.course.notebook import BUILD, ROOT

OK, WARN, FAIL = "ok", "warn", "fail"  # green, yellow (works, but see the fix), red (blocks the course)
COLOURS = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"}
MARKS = {OK: "ok  ", WARN: "note", FAIL: "FIX "}
KIT = "vit-course-helpers"
INSTALL = "run `make install` in the kit's folder (or `pip install -c constraints.txt -e .[dev]`)"
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
GIB = 2**30
CACHE_BYTES = 2 * GIB  # the gpu profile's model (0.35 GB) and CIFAR-10 (0.35 GB packed and unpacked), with room


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self, colour: bool) -> str:
        mark = MARKS[self.status]
        if colour:
            mark = f"{COLOURS[self.status]}{mark}\033[0m"
        fix = f"\n      -> {self.fix}" if self.fix and self.status != OK else ""
        return f"{mark}  {self.name:<10} {self.detail}{fix}"


def pins(path: Path) -> dict[str, str]:
    """The exact versions in a constraints file, by normalised name."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            found[normalise(match[1])] = match[2]
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def needed_packages() -> list[str]:
    """The packages the course needs: the kit's dependencies and its `dev` extra (JupyterLab, the kernel, tests)."""
    requirements = importlib.metadata.requires(KIT) or []
    names = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if not marker or "extra == \"dev\"" in marker.replace("'", '"'):
            names.append(normalise(re.split(r"[<>=!~\[ (]", name.strip(), maxsplit=1)[0]))
    return names


def check_python() -> Check:
    version = platform.python_version()
    where = f"Python {version} at {sys.executable}"
    if sys.version_info < (3, 10):
        return Check("python", FAIL, where, "the kit needs Python 3.10 or newer (3.11 is what it is tested with)")
    if sys.version_info[:2] != (3, 11):
        return Check("python", WARN, where, "the kit is tested with Python 3.11; others within 3.10+ should work")
    return Check("python", OK, where)


def check_packages(constraints: Path = ROOT / "constraints.txt") -> Check:
    if installed(KIT) is None:
        return Check("packages", FAIL, f"the kit ({KIT}) is not installed in this environment", INSTALL)
    needed = needed_packages()
    missing = [name for name in needed if installed(name) is None]
    if missing:
        return Check("packages", FAIL, f"missing: {', '.join(missing)}", INSTALL)
    tested = pins(constraints) if constraints.is_file() else {}
    differ = [f"{name} {installed(name)} (tested: {version})" for name, version in tested.items()
              if installed(name) not in (None, version) and name in needed]
    if differ:
        return Check("packages", WARN, f"{len(differ)} differ from constraints.txt: {', '.join(differ[:3])}"
                     + (" ..." if len(differ) > 3 else ""),
                     "fine if the notebooks run; `make install` gives the tested versions")
    return Check("packages", OK, f"{len(needed)} packages, at the versions of constraints.txt" if tested
                 else f"{len(needed)} packages installed (no constraints.txt here to compare)")


def check_kernel() -> Check:
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return Check("kernel", FAIL, "Jupyter is not installed in this environment", INSTALL)
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return Check("kernel", FAIL, "no Jupyter kernel 'python3' is registered",
                     f"{sys.executable} -m pip install ipykernel (`make install` does it)")
    command = spec.argv[0]
    runs_here = (Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve())
                 if command in ("python", "python3") else Path(command).resolve() == Path(sys.executable).resolve())
    if not runs_here:
        return Check("kernel", FAIL, f"kernel 'python3' ({spec.resource_dir}) runs {command}, not this environment",
                     f"remove {spec.resource_dir}, or point it here: `{sys.executable} -m ipykernel install --user`")
    return Check("kernel", OK, f"'{spec.display_name}' runs this environment's Python")


def check_widgets() -> Check:
    try:
        from jupyter_core.paths import jupyter_path
        from jupyterlab_server.config import get_federated_extensions, get_page_config
    except ImportError:
        return Check("widgets", FAIL, "JupyterLab is not installed in this environment", INSTALL)
    paths = jupyter_path("labextensions")
    found = get_federated_extensions(paths).get(WIDGETS_EXTENSION)
    if found is None:
        return Check("widgets", FAIL, "JupyterLab has no ipywidgets extension: sliders would not show",
                     f"{sys.executable} -m pip install jupyterlab_widgets (`make install` does it)")
    disabled = get_page_config(paths).get("disabledExtensions", [])
    if isinstance(disabled, dict):  # page_config.json's own form: name -> true
        disabled = [name for name, off in disabled.items() if off]
    if WIDGETS_EXTENSION in disabled:
        return Check("widgets", FAIL, "the ipywidgets extension is disabled in JupyterLab",
                     f"jupyter labextension enable {WIDGETS_EXTENSION}")
    return Check("widgets", OK, f"ipywidgets extension {found.get('version', '')} active in JupyterLab")


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_plan_line(device=None) -> str:
    """The GPU here (or `device`, a `helpers.hardware.Device`) and the plan the gpu profile trains with on it,
    from the device-aware planner (`profiles.device_plan`); without that planner, the profile's own settings."""
    settings = profiles.resolve("gpu")
    planner = getattr(profiles, "device_plan", None)  # the seam: the device-aware planner, where the kit has it
    if planner is None:
        import torch

        props = torch.cuda.get_device_properties(0)
        return (f"{props.name} ({props.total_memory / GIB:.1f} GiB, compute capability {props.major}.{props.minor}): "
                f"the gpu profile trains with its own settings ({settings.precision}, batch {settings.batch_size}); "
                "this kit has no device-aware planner yet")
    plan = planner(settings, device=device)
    if not plan.fits:
        return f"{plan.device}: the gpu profile does not fit: {plan.reasons[-1]}"
    return (f"{plan.device}: the gpu profile plans {plan.precision}, micro-batch {plan.batch_size} x "
            f"{plan.grad_accum} accumulation steps")


def check_device() -> Check:
    import torch

    memory = memory_bytes()
    host = f"{os.cpu_count()} CPU cores" + (f", {memory / GIB:.0f} GiB memory" if memory else "")
    if torch.cuda.is_available():
        return Check("device", OK, f"{host}; GPU {device_plan_line()}")
    if memory and memory < 4 * GIB:
        return Check("device", WARN, f"{host}, no CUDA GPU: the cpu profile runs, slowly with this little memory",
                     "close other programs; the cpu profile needs about 2 GiB")
    return Check("device", OK, f"{host}, no CUDA GPU: the notebooks run the cpu profile (minutes each)")


def cache_folders() -> dict[str, Path]:
    """The gpu profile's caches: the Hugging Face hub cache and the course's data folder."""
    from huggingface_hub import constants

    from helpers.data.datasets import DEFAULT_ROOT

    return {"hub cache": Path(constants.HF_HUB_CACHE), "data": Path(DEFAULT_ROOT)}


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(folders: dict[str, Path] | None = None) -> Check:
    folders = folders or cache_folders()
    free = {name: shutil.disk_usage(existing_parent(folder)).free for name, folder in folders.items()}
    least = min(free, key=free.get)
    detail = ", ".join(f"{name} {size / GIB:.0f} GiB free" for name, size in free.items())
    if free[least] < CACHE_BYTES:
        return Check("disk", WARN, f"{detail}: too little for the gpu profile's model and data",
                     f"free {CACHE_BYTES / GIB:.0f} GiB where the {least} lives, or set HF_HOME / COURSE_DATA")
    return Check("disk", OK, detail)


def check_network() -> Check:
    cached = profiles.gpu_assets_cached()
    what = f"the gpu profile's model ({profiles.GPU_MODEL}) {'is' if cached else 'is not'} cached"
    if profiles.is_online():
        return Check("network", OK, f"the hub is reachable; {what}")
    if cached:
        return Check("network", OK, f"offline; {what}, so the gpu profile can run offline")
    return Check("network", WARN, f"offline (hub not reachable or HF_HUB_OFFLINE=1); {what}",
                 "the cpu profile needs no network; for the gpu profile run `python -m helpers.course prefetch` "
                 "once online, or install a workshop bundle")


def writable(folder: Path) -> bool:
    target = existing_parent(folder)
    try:
        with tempfile.TemporaryFile(dir=target):
            return True
    except OSError:
        return False


def check_write_access(folders: dict[str, Path] | None = None) -> Check:
    folders = folders or {"build/": BUILD, **cache_folders()}
    blocked = [f"{name} ({folder})" for name, folder in folders.items() if not writable(folder)]
    if blocked:
        return Check("write", FAIL, f"cannot write to {', '.join(blocked)}",
                     "give your user write access there, or set HF_HOME / COURSE_DATA to a folder you own")
    return Check("write", OK, "build/ and the caches are writable")


CHECKS = [check_python, check_packages, check_kernel, check_widgets, check_device, check_disk, check_network,
          check_write_access]


def run_checks() -> list[Check]:
    """Every check; one that cannot run at all (a package missing under it) is a red line, not a traceback."""
    results = []
    for check in CHECKS:
        try:
            results.append(check())
        except ImportError as error:
            results.append(Check(check.__name__.removeprefix("check_"), FAIL, f"cannot check: {error}", INSTALL))
    return results


def doctor(brief: bool = False, colour: bool | None = None) -> int:
    """Print the checks (brief: only those that need attention, and one summary line); 1 when one is red."""
    results = run_checks()
    if colour is None:
        colour = sys.stdout.isatty() or in_notebook()
    shown = [r for r in results if r.status == FAIL] if brief else results
    for result in shown:
        print(result.line(colour))
    reds = sum(r.status == FAIL for r in results)
    notes = sum(r.status == WARN for r in results)
    if reds:
        print(f"doctor: {reds} of {len(results)} checks need a fix before the course can run.")
    elif brief:
        print(f"doctor: all {len(results)} checks passed" + (
            f" ({notes} with a note: `python -m helpers.course doctor` shows them)." if notes else "."))
    return 1 if reds else 0


def in_notebook() -> bool:
    """True inside a Jupyter kernel, whose output shows ANSI colours."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and type(ipython.get_ipython()).__name__ == "ZMQInteractiveShell"
