"""The workshop bundle on a tiny wheelhouse the tests make: its manifest and checksums, and one sentence for a bundle
that is truncated, damaged, altered, or built for another Python or platform. The real end-to-end install (GBs of
wheels, a fresh venv, no index) is `make test-bundle` (tests/install/)."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers.course import bundle

ROOT = Path(__file__).resolve().parent.parent
WHEELS = {"tiny-1.0-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl": "tiny",
          "other-2.0-py3-none-any.whl": "other"}


def make_wheel(path: Path, package: str) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", "VALUE = 1\n")
        wheel.writestr(f"{package}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A bundle of the tiny wheelhouse, this kit's student copies and a stand-in of a cached hub model."""
    folder = tmp_path_factory.mktemp("bundle")
    wheels = folder / "wheels"
    wheels.mkdir()
    for name, package in WHEELS.items():
        make_wheel(wheels / name, package)
    hub = folder / "models--google--vit-base-patch16-224-in21k"
    (hub / "blobs").mkdir(parents=True)
    (hub / "blobs" / "abc123").write_text('{"model_type": "vit"}')
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("c0ffee")
    (hub / "snapshots" / "c0ffee").mkdir(parents=True)
    (hub / "snapshots" / "c0ffee" / "config.json").symlink_to(hub / "blobs" / "abc123")
    patch = pytest.MonkeyPatch()
    patch.setattr(bundle, "gpu_caches", lambda: {"caches/hub/" + hub.name: hub})
    manifest = bundle.build(folder / "workshop.tar", wheels=wheels)
    patch.undo()
    return folder / "workshop.tar", manifest, folder


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def rewrite(source: Path, target: Path, manifest_change=None, drop=(), extra=None) -> Path:
    """A copy of a bundle with its manifest changed, members dropped or one added, as if built elsewhere."""
    files = members(source)
    manifest = json.loads(files.pop(bundle.MANIFEST))
    if manifest_change:
        manifest_change(manifest)
    files = {name: data for name, data in files.items() if name not in drop} | (extra or {})
    with tarfile.open(target, "w") as tar:
        for name, data in [(bundle.MANIFEST, json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def install_error(path: Path, tmp_path: Path) -> str:
    with pytest.raises(ValueError) as error:
        bundle.install(path, venv=tmp_path / "venv", root=tmp_path)
    assert not (tmp_path / "venv").exists(), "nothing may be installed from a bad bundle"
    return str(error.value)


def test_the_manifest_lists_every_file_with_size_and_sha256(built):
    path, manifest, _ = built
    files = members(path)
    assert next(iter(files)) == bundle.MANIFEST and json.loads(files[bundle.MANIFEST]) == manifest
    assert set(files) - {bundle.MANIFEST} == set(manifest["files"])
    for name, data in files.items():
        if name != bundle.MANIFEST:
            assert manifest["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    names = list(manifest["files"])
    assert "constraints.txt" in names and sum(n.startswith("wheels/") for n in names) == 2
    assert sum(n.startswith("student/") for n in names) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))


def test_the_target_is_this_machine_and_the_wheels_glibc(built):
    _, manifest, _ = built
    here = bundle.this_machine()
    assert {k: manifest["target"][k] for k in ("python", "implementation", "system", "machine")} == {
        k: here[k] for k in ("python", "implementation", "system", "machine")}
    assert manifest["target"]["glibc"] == "2.17"  # the tiny wheel's lowest manylinux level


def test_a_cached_hub_model_is_packed_without_links_or_blobs(built):
    path, manifest, _ = built
    hub = [n for n in manifest["files"] if n.startswith("caches/hub/")]
    assert sorted(hub) == ["caches/hub/models--google--vit-base-patch16-224-in21k/refs/main",
                           "caches/hub/models--google--vit-base-patch16-224-in21k/snapshots/c0ffee/config.json"]
    assert members(path)[hub[1]] == b'{"model_type": "vit"}'


def test_unpacking_restores_every_file(built, tmp_path):
    path, manifest, folder = built
    bundle.unpack(path, tmp_path)
    for name in WHEELS:
        assert (tmp_path / "wheels" / name).read_bytes() == (folder / "wheels" / name).read_bytes()
    assert (tmp_path / "constraints.txt").read_bytes() == (ROOT / "constraints.txt").read_bytes()


@pytest.mark.parametrize("cut", ["inside a file", "between files"])
def test_a_truncated_bundle_is_one_sentence_and_installs_nothing(built, tmp_path, cut):
    path, manifest, _ = built
    short = tmp_path / "short.tar"
    if cut == "inside a file":
        short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        rewrite(path, short, drop=[next(n for n in manifest["files"] if n.startswith("student/"))])
    message = install_error(short, tmp_path)
    assert message == (f"{short} is truncated (the copy stopped early): copy it again from the source and "
                       "compare its size with the original.")


def test_a_damaged_file_fails_its_checksum(built, tmp_path):
    path, _, _ = built
    data = bytearray(path.read_bytes())
    wheel = data.find(b"VALUE = 1")
    data[wheel + 8] ^= 1
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    message = install_error(damaged, tmp_path)
    assert message.endswith("does not match its checksum (the file is damaged): copy the bundle again from the source.")
    assert message.startswith("wheels/")


def test_a_bundle_for_another_python_and_platform_names_both(built, tmp_path):
    path, _, _ = built

    def elsewhere(manifest):
        manifest["target"].update(python="3.12", system="Darwin", machine="arm64", glibc=None)

    message = install_error(rewrite(path, tmp_path / "mac.tar", elsewhere), tmp_path)
    here = bundle.describe(bundle.this_machine())
    assert message == (f"This bundle was built for CPython 3.12 on Darwin arm64 but this machine runs {here}: build "
                       "one for it with `python -m helpers.course bundle --out FILE` on a machine like it.")


def test_a_bundle_needing_a_newer_glibc_is_refused(built, tmp_path):
    path, _, _ = built
    newer = rewrite(path, tmp_path / "new.tar", lambda m: m["target"].update(glibc="99.0"))
    assert "(glibc 99.0+)" in install_error(newer, tmp_path)


def test_an_altered_bundle_and_a_file_that_is_no_bundle_are_refused(built, tmp_path):
    path, _, _ = built
    altered = rewrite(path, tmp_path / "altered.tar", extra={"wheels/evil-1.0-py3-none-any.whl": b"x"})
    assert "which its manifest does not list" in install_error(altered, tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not a workshop bundle (not a tar file)" in install_error(tmp_path / "notes.txt", tmp_path)


def test_install_bundle_from_the_command_line_prints_one_error_line(built, tmp_path):
    path, _, _ = built
    short = tmp_path / "short.tar"
    short.write_bytes(path.read_bytes()[:20_000])
    done = subprocess.run([sys.executable, "-m", "helpers.course", "install-bundle", str(short), "--venv",
                           str(tmp_path / "venv")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {short} is truncated")


def test_the_installer_runs_on_a_bare_python(built, tmp_path):
    """`python3 helpers/course/bundle.py install` needs nothing but the standard library (-S: no site-packages)."""
    path, _, _ = built
    mac = rewrite(path, tmp_path / "mac.tar", lambda m: m["target"].update(system="Darwin"))
    done = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "helpers" / "course" / "bundle.py"), "install",
                           str(mac), "--venv", str(tmp_path / "venv")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: This bundle was built for CPython")
