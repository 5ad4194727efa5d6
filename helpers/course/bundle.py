"""A workshop in one file: `bundle --out FILE` packs what a room needs, `install-bundle FILE` sets up a machine
from it with the network off.

The bundle is a tar: `MANIFEST.json` first (what it was built for, and the size and sha256 of every file), then
`constraints.txt`, `wheels/` (every pinned dependency as a wheel for the target Python and platform, so
nothing is built or downloaded at install), `student/` (the student copies) and, when this machine has them
cached, `caches/hub/` (the gpu profile's model) and `caches/data/` (CIFAR-10). Installing checks the target
first, then every file against its checksum before anything is installed, then runs
`pip install --no-index --find-links` into the venv and copies the caches and student copies into place.

The install side uses only the standard library, so on a machine with nothing but Python it runs as
`python3 helpers/course/bundle.py install FILE` (what `make install-bundle BUNDLE=FILE` does).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "MANIFEST.json"
FORMAT = 1
KIT = "vit-course-helpers"
BUILD_REQUIREMENTS = ["setuptools>=68"]  # pyproject's build backend: `pip install -e .` builds offline with it
MANYLINUX_FLOOR = 28  # glibc 2.28: torch's own floor; wheels for older glibc levels are accepted too
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def this_machine() -> dict:
    """The Python and platform this interpreter runs on, in the manifest's terms."""
    libc, version = platform.libc_ver()
    return {"python": "%d.%d" % sys.version_info[:2], "implementation": platform.python_implementation(),
            "system": platform.system(), "machine": platform.machine().lower(),
            "glibc": version if libc == "glibc" else None}


def describe(target: dict) -> str:
    glibc = f" (glibc {target['glibc']}+)" if target.get("glibc") else ""
    return f"{target['implementation']} {target['python']} on {target['system']} {target['machine']}{glibc}"


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def check_target(target: dict, here: dict | None = None) -> None:
    """Raise ValueError with one sentence when a bundle built for `target` cannot install on this machine."""
    here = here or this_machine()
    same = all(target[key] == here[key] for key in ("python", "implementation", "system", "machine"))
    needed, found = target.get("glibc"), here.get("glibc")
    old_glibc = needed and found and version_tuple(found) < version_tuple(needed)
    if not same or old_glibc:
        raise ValueError(f"This bundle was built for {describe(target)} but this machine runs {describe(here)}: "
                         "build one for it with `python -m helpers.course bundle --out FILE` on a machine like it.")


# ---------------------------------------------------------------- building (needs the kit's environment)


def requirements() -> list[str]:
    """The installed kit's dependencies and its `dev` extra (JupyterLab, the kernel, the tests)."""
    import importlib.metadata

    found = []
    for requirement in importlib.metadata.requires(KIT) or []:
        spec, _, marker = requirement.partition(";")
        if not marker or 'extra == "dev"' in marker.replace("'", '"'):
            found.append(spec.strip())
    return found + BUILD_REQUIREMENTS


def download_flags(python: str) -> list[str]:
    """pip's target flags: binary wheels only, for `python` (e.g. '3.11.7') and, on Linux, every manylinux level
    up to glibc 2.MANYLINUX_FLOOR. Environment markers are still read on this machine, so build on the OS you target."""
    flags = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
             "--abi", "cp" + "".join(python.split(".")[:2])]
    if platform.system() == "Linux":
        machine = platform.machine()
        levels = [f"manylinux_2_{minor}_{machine}" for minor in range(MANYLINUX_FLOOR, 4, -1)]
        levels += [f"manylinux{name}_{machine}" for name in ("2014", "2010", "1")]
        flags += [flag for level in levels for flag in ("--platform", level)]
    return flags


def download_wheels(folder: Path, python: str) -> None:
    """Every wheel the kit needs, pinned by constraints.txt, into `folder` (kept between builds as a cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "-d", str(folder),
               *download_flags(python), "-c", str(ROOT / "constraints.txt"), *requirements()]
    result = subprocess.run(command)
    if result.returncode:
        raise ValueError(f"pip could not download every wheel for Python {python} (its message is above): "
                         "check the network, or pass --wheels with a folder of wheels made elsewhere.")


def wheel_glibc(names: list[str]) -> str | None:
    """The glibc a set of wheels needs: the highest of each wheel's lowest manylinux level."""
    aliases = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    needed = []
    for name in names:
        levels = [tuple(map(int, m)) for m in re.findall(r"manylinux_(\d+)_(\d+)_", name)]
        levels += [aliases[m] for m in re.findall(r"(manylinux(?:1|2010|2014))_", name)]
        if levels:
            needed.append(min(levels))
    return "%d.%d" % max(needed) if needed else None


def gpu_caches() -> dict[str, Path]:
    """The gpu profile's cached model and dataset on this machine, by their place in the bundle."""
    from helpers import profiles
    from helpers.course.doctor import cache_folders

    folders = cache_folders()
    found = {}
    model = folders["hub cache"] / ("models--" + profiles.GPU_MODEL.replace("/", "--"))
    if (model / "refs" / "main").is_file():
        found["caches/hub/" + model.name] = model
    cifar = folders["data"] / "cifar-10-batches-py"
    if cifar.is_dir():
        found["caches/data/" + cifar.name] = cifar
    return found


def hub_files(folder: Path) -> list[Path]:
    """A hub cache folder's files as the bundle keeps them: refs and snapshots (links followed), not the blobs."""
    return [p for part in ("refs", "snapshots") for p in sorted((folder / part).rglob("*")) if p.is_file()]


def collect(staging: Path, wheels: Path) -> dict[str, Path]:
    """Every file of the bundle, by its name in the bundle."""
    from helpers.course.student import make_student_copies

    files = {"constraints.txt": ROOT / "constraints.txt"}
    files.update({f"wheels/{p.name}": p for p in sorted(wheels.glob("*.whl"))})
    copies = make_student_copies(staging / "student", force=True)
    files.update({f"student/{p.name}": p for p in copies})
    for name, folder in gpu_caches().items():
        listed = hub_files(folder) if name.startswith("caches/hub/") else sorted(folder.rglob("*"))
        files.update({f"{name}/{p.relative_to(folder).as_posix()}": p for p in listed if p.is_file()})
    return files


def build(out: Path, python: str | None = None, wheels: Path | None = None) -> dict:
    """Write the bundle to `out` (via `out.partial`, so a file named `out` is always complete); its manifest."""
    python = python or platform.python_version()
    if wheels is None:
        wheels = ROOT / "build" / "wheels" / f"cp{''.join(python.split('.')[:2])}"
        download_wheels(wheels, python)
    if not any(wheels.glob("*.whl")):
        raise ValueError(f"{wheels} holds no wheels: pass --wheels with a folder of .whl files, or leave it out.")
    with tempfile.TemporaryDirectory() as staging:
        files = collect(Path(staging), wheels)
        target = {**this_machine(), "python": ".".join(python.split(".")[:2]),
                  "glibc": wheel_glibc([n for n in files if n.startswith("wheels/")])}
        manifest = {"format": FORMAT, "created": datetime.datetime.now().isoformat(timespec="seconds"),
                    "kit_commit": kit_commit(), "target": target,
                    "files": {name: {"size": path.stat().st_size, "sha256": sha256(path)}
                              for name, path in files.items()}}
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, fileobj=io.BytesIO(data))
            for name, path in files.items():
                tar.add(path, arcname=name, recursive=False)
        partial.replace(out)
    return manifest


def kit_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return result.stdout.strip() or None


# ---------------------------------------------------------------- installing (standard library only)


def read_manifest(tar: tarfile.TarFile, bundle: Path) -> dict:
    first = tar.next()
    if first is None or first.name != MANIFEST:
        raise ValueError(f"{bundle} is not a workshop bundle (it does not start with {MANIFEST}): "
                         "make one with `python -m helpers.course bundle --out FILE`.")
    manifest = json.load(tar.extractfile(first))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{bundle} is a bundle of format {manifest.get('format')}, this kit reads format {FORMAT}: "
                         "build it again with this kit.")
    return manifest


def unpack(bundle: Path, dest: Path) -> dict:
    """Check the bundle's target, then extract it into `dest`, checking every file's size and sha256 against the
    manifest; ValueError (one sentence) on a bundle for another machine, a damaged or truncated one."""
    truncated = (f"{bundle} is truncated (the copy stopped early): copy it again from the source and compare its "
                 "size with the original.")
    try:
        tar = tarfile.open(bundle, "r:")
    except tarfile.ReadError as error:
        raise ValueError(f"{bundle} is not a workshop bundle (not a tar file): make one with "
                         "`python -m helpers.course bundle --out FILE`.") from error
    try:
        with tar:
            manifest = read_manifest(tar, bundle)
            check_target(manifest["target"])
            expected = manifest["files"]
            seen = set()
            for member in tar:
                if member.name == MANIFEST:
                    continue
                if member.name not in expected or not member.isfile() or member.name in seen:
                    raise ValueError(f"{bundle} holds {member.name!r}, which its manifest does not list: "
                                     "it was altered after it was built; build it again.")
                seen.add(member.name)
                _extract_checked(tar, member, dest, expected[member.name], bundle)
    except (tarfile.ReadError, EOFError) as error:
        raise ValueError(truncated) from error
    if seen != set(expected):
        raise ValueError(truncated)
    return manifest


def _extract_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, expected: dict, bundle: Path):
    target = dest / member.name
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ValueError(f"{bundle} names a file outside its folder ({member.name!r}): it is not safe to unpack.")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    source = tar.extractfile(member)
    with open(target, "wb") as out:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != member.size:
        raise EOFError(member.name)
    if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
        raise ValueError(f"{member.name} in {bundle} does not match its checksum (the file is damaged): "
                         "copy the bundle again from the source.")


def offline_pip_environment() -> dict:
    """The environment for pip with no index: this machine's pip config and PIP_* variables set aside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip_install_offline(venv: Path, unpacked: Path, root: Path) -> None:
    """Create `venv` if needed and install the kit in `root` (editable, with `dev`) from the unpacked wheels only."""
    python = venv_python(venv)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    command = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(unpacked / "wheels"),
               "-c", str(unpacked / "constraints.txt"), "-e", f"{root}[dev]"]
    if subprocess.run(command, env=offline_pip_environment()).returncode:
        raise ValueError("pip could not install from the bundle's wheels (its message is above): the bundle was "
                         "built from another version of the kit; build it again from this checkout.")


def cache_folders(venv: Path) -> dict[str, Path]:
    """Where the installed kit looks for the hub cache and the data (it honours HF_HOME and COURSE_DATA)."""
    code = ("import json; from helpers.course.doctor import cache_folders as c; "
            "print(json.dumps({k: str(v) for k, v in c().items()}))")
    shown = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True, check=True)
    folders = json.loads(shown.stdout.strip().splitlines()[-1])
    return {"caches/hub": Path(folders["hub cache"]), "caches/data": Path(folders["data"])}


def place(source: Path, destination: Path, keep_existing: bool) -> list[str]:
    """Copy the files under `source` into `destination`; with `keep_existing`, a file there already is left as it
    is. Returns the files kept."""
    kept = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = destination / path.relative_to(source)
        if keep_existing and target.exists():
            kept.append(str(target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return kept


def install(bundle: Path, venv: Path = ROOT / ".venv", root: Path = ROOT) -> str:
    """Set this machine up from `bundle` with no network: verify, install into `venv`, place the caches and
    the student copies. Returns what was done, in one sentence."""
    started = time.perf_counter()
    bundle = Path(bundle)
    if not bundle.is_file():
        raise ValueError(f"No bundle at {bundle}: give the path of the file `bundle --out` wrote.")
    (root / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "build") as scratch:
        unpacked = Path(scratch)
        manifest = unpack(bundle, unpacked)
        pip_install_offline(venv, unpacked, root)
        done = [f"{sum(name.startswith('wheels/') for name in manifest['files'])} wheels into {venv}"]
        if (unpacked / "caches").is_dir():
            for name, folder in cache_folders(venv).items():
                if (unpacked / name).is_dir():
                    place(unpacked / name, folder, keep_existing=False)
                    done.append(f"the {name.split('/')[1]} cache into {folder}")
        kept = place(unpacked / "student", root / "notebooks" / "student", keep_existing=True)
        done.append("student copies into notebooks/student" + (f" ({len(kept)} there already kept)" if kept else ""))
        (venv / ".installed").touch()  # the Makefile's stamp: `make` will not reinstall from the network
    return f"Installed {bundle.name} in {time.perf_counter() - started:.0f} s with no network: {', '.join(done)}."


def main(argv=None) -> int:
    """`python3 helpers/course/bundle.py install FILE [--venv DIR]`: the installer, on a bare Python."""
    parser = argparse.ArgumentParser(prog="bundle.py", description="install a workshop bundle with no network")
    parser.add_argument("action", choices=["install"])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    args = parser.parse_args(argv)
    try:
        print(install(args.bundle, args.venv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
