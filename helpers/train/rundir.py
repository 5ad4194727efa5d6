"""The folder of a `fit()` run (lesson 05): checked writable before epoch 1, held by one process at a time
(an exclusive lock on `.lock`, which holds the holder's PID), and never shared by two runs.

A fresh run (`resume=False`) refuses a folder that holds an earlier run's checkpoints unless `overwrite=True`.
On Windows, which has no `fcntl.flock`, the folder is not locked.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from helpers.train.checkpoint import CheckpointError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


RUN_ENTRIES = ("latest", "epoch-*", "best")  # what a folder holding a run has


class FolderInUse(RuntimeError):
    """Another process is training into the same checkpoint folder (lesson 05)."""


@contextlib.contextmanager
def claimed_run_folder(directory, accelerator: Accelerator, *, resume: bool, overwrite: bool):
    """Hold `directory` for this run for the block: writable, locked, and either resumed or free (lesson 05).

    `overwrite=True` deletes an earlier run's checkpoints first. With `directory=None` nothing happens.
    """
    if directory is None:
        yield None
        return
    directory = Path(directory).expanduser()
    check_writable(directory)
    lock = hold_lock(directory) if accelerator.is_main_process else None
    try:
        earlier = sorted(p.name for pattern in RUN_ENTRIES for p in directory.glob(pattern))
        if earlier and not resume and not overwrite:
            raise CheckpointError(
                f"{directory} holds the checkpoints of an earlier run ({', '.join(earlier)}): resume it with "
                "resume=True, choose another checkpoint_dir, or pass overwrite=True to delete them and start afresh."
            )
        if accelerator.is_main_process:
            remove_leftovers(directory, earlier if overwrite else [])
        accelerator.wait_for_everyone()
        yield directory
    finally:
        if lock is not None:
            release_lock(lock)


def check_writable(directory: Path) -> None:
    """Create `directory` and write a file into it, or say in one sentence why that fails (lesson 05)."""
    probe = directory / f".write-test.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise OSError(f"Cannot write into checkpoint_dir {directory} ({error.strerror or error}): "
                      "choose a folder you can write to.") from None


def hold_lock(directory: Path):
    """An open `.lock` file this process holds an exclusive lock on, with its PID written in (lesson 05).

    The holder deletes the file when it is done (`release_lock`); a process that locked a file just deleted
    that way tries again on the new one.
    """
    if fcntl is None:
        return None
    path = directory / LOCK_FILE
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderInUse(f"{directory} is in use by another training process (PID {holder}): wait for it to "
                              "finish, stop it, or choose another checkpoint_dir.") from None
        if still_there(path, handle):
            break
        handle.close()
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def still_there(path: Path, handle) -> bool:
    """Whether `path` is still the file `handle` has open, not deleted or replaced since (lesson 05)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False


def release_lock(handle) -> None:
    """Delete the lock file, then let go of the lock (lesson 05)."""
    Path(handle.name).unlink(missing_ok=True)
    handle.close()


def remove_leftovers(directory: Path, earlier: list[str]) -> None:
    """Delete staging files of processes that died mid-write, and the `earlier` run entries (lesson 05).

    `latest` goes first, so a crash in between never leaves it naming a deleted folder.
    """
    for name in sorted(earlier, key=lambda name: name != "latest"):
        path = directory / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for stale in [*directory.glob(".epoch-*.tmp"), *directory.glob("latest.*.tmp")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
