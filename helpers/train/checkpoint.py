"""Checkpoints of a `fit()` run (lesson 05): one folder per epoch, written in full before `latest` names it,
checksummed, and read back without running any code; the best epoch's weights; the random generators' state.

A checkpoint folder `epoch-NNNN` holds `model.safetensors`, `training_state.pt` (optimizer, schedule, history),
one `rng-<rank>.pt` per process and `manifest.json` (the sha256 of each file and the run's fingerprint).
Every `torch.load` uses `weights_only=True`: tensors, numbers and text only, never a pickled object.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from helpers.data.folders import file_hash
from helpers.train.fingerprint import resume_problems
from helpers.train.history import History

MODEL_FILE = "model.safetensors"


STATE_FILE = "training_state.pt"


MANIFEST_FILE = "manifest.json"


EPOCH_FOLDER = re.compile(r"epoch-\d{4}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: damaged, not a checkpoint, or from a different run (lesson 05)."""


def plain_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside whatever `prepare` and `torch.compile` wrapped around it (lesson 05)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


class BestWeights:
    """The weights of the best epoch so far: in memory, and in `folder` when given (so they survive a resume) (lesson 05)."""

    def __init__(self, accelerator: Accelerator, folder: Path | None):
        self.accelerator, self.folder, self.state = accelerator, folder, None

    def keep(self, model: torch.nn.Module) -> None:
        module = plain_model(self.accelerator, model)
        self.state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
        if self.folder is not None and self.accelerator.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = self.folder / f"{MODEL_FILE}.{os.getpid()}.tmp"
            save_model(module, str(temporary))
            os.replace(temporary, self.folder / MODEL_FILE)
        self.accelerator.wait_for_everyone()

    def restore(self, model: torch.nn.Module) -> None:
        module = plain_model(self.accelerator, model)
        if self.state is not None:
            module.load_state_dict(self.state)
            return
        file = self.folder / MODEL_FILE if self.folder is not None else None
        if file is None or not file.exists():
            raise FileNotFoundError(
                "The best epoch was trained before this resume and its weights were not saved: "
                "resume with restore_best=True only when the first call used it too."
            )
        with reading(file):
            load_model(module, str(file))


def rng_state() -> dict:
    """The state of every random generator `fit()` uses (Python, NumPy, PyTorch, CUDA) as tensors and numbers
    only, so `torch.load(weights_only=True)` reads it back (lesson 05)."""
    version, python_words, python_gauss = random.getstate()
    _, numpy_words, numpy_position, has_gauss, numpy_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(python_words, dtype=torch.int64), "python_version": version,
        "python_gauss": python_gauss,
        "numpy": torch.from_numpy(numpy_words.astype(np.int64)), "numpy_position": int(numpy_position),
        "numpy_gauss": [int(has_gauss), float(numpy_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the random generators' state saved by `rng_state` (lesson 05)."""
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    numpy_words = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", numpy_words, state["numpy_position"], *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def kept_random_state():
    """Draw random numbers freely inside the block; afterwards every generator is as it was (lesson 05)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def save_checkpoint(directory, accelerator, model, optimizer, scheduler, history: History,
                    fingerprint: dict | None = None) -> Path:
    """Write the epoch's checkpoint into a staging folder named for this process, checksum it, rename it into
    place, then point `latest` at it; the previous checkpoint goes only after that (lesson 05)."""
    directory = Path(directory)
    final = directory / f"epoch-{history.rows[-1]['epoch']:04d}"
    staging = directory / f".{final.name}.{broadcast_object_list([os.getpid()])[0]}.tmp"
    with removed_on_failure(staging, final.name, model, optimizer):
        if accelerator.is_main_process:
            staging.mkdir(parents=True)
            save_model(plain_model(accelerator, model), str(staging / MODEL_FILE))
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history.rows}
            torch.save(state, staging / STATE_FILE)
        accelerator.wait_for_everyone()
        torch.save(rng_state(), staging / f"rng-{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {file.name: file_hash(file) for file in sorted(staging.iterdir())}
            manifest = {"epoch": history.rows[-1]["epoch"], "files": files, "fingerprint": fingerprint or {}}
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # an epoch written before a crash, now trained again
        staging.rename(final)
        write_atomically(directory / "latest", final.name)
        for old in directory.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def removed_on_failure(staging: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Remove `staging` when writing into it fails, and say how much room a checkpoint needs (lesson 05)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as error:  # torch.save fails with a RuntimeError
        shutil.rmtree(staging, ignore_errors=True)
        tensors = [*model.state_dict().values(),
                   *(value for state in optimizer.state.values() for value in state.values()
                     if isinstance(value, torch.Tensor))]
        megabytes = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        raise OSError(
            f"Could not write checkpoint {name} into {staging.parent} ({first_line(error)}): one checkpoint takes "
            f"about {megabytes:,.1f} MB and the folder needs room for two while a new one is written, so free some "
            "space or choose another checkpoint_dir (the previous checkpoint is intact)."
        ) from None


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file named for this process, so a reader never sees half
    of it (lesson 05)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def latest_checkpoint(directory: Path) -> Path:
    """The folder `directory/latest` names; it must be an `epoch-NNNN` folder right inside `directory` (lesson 05)."""
    pointer = directory / "latest"
    if not pointer.exists():
        found = sorted(p.name for p in directory.glob("epoch-*")) if directory.is_dir() else []
        if found:
            raise CheckpointError(
                f"{pointer} is missing, so it is not known which of {', '.join(found)} is complete: write the name "
                f"of the one to resume from into {pointer}, or start afresh with overwrite=True."
            )
        raise FileNotFoundError(f"No checkpoint in {directory}: train once with checkpoint_dir set (resume=False).")
    name = pointer.read_text(errors="replace").strip()
    folder = directory / name
    if not EPOCH_FOLDER.fullmatch(name) or folder.is_symlink() or not folder.is_dir():
        raise CheckpointError(
            f"{pointer} should name a checkpoint folder inside {directory} such as epoch-0003, but it holds "
            f"{name[:60]!r}: write the name of an epoch folder there, or start afresh with overwrite=True."
        )
    return folder


def verified_manifest(folder: Path, process_index: int) -> dict:
    """The folder's manifest, after checking that every file it lists is there with its checksum (lesson 05)."""
    manifest_file = folder / MANIFEST_FILE
    with reading(manifest_file):
        manifest = json.loads(manifest_file.read_text())
        listed = manifest["files"]
    for name in (MODEL_FILE, STATE_FILE, f"rng-{process_index}.pt"):
        if name not in listed:
            raise CheckpointError(f"{folder / name} is not part of this checkpoint (its manifest does not list it): "
                                  "resume with as many processes as the run used, or start afresh with overwrite=True.")
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file() or file_hash(file) != digest:
            state = "missing" if not file.is_file() else "damaged (its sha256 differs from the manifest's)"
            raise CheckpointError(f"{file} is {state}: this checkpoint cannot be trusted, so start afresh with "
                                  "overwrite=True (or restore the file from a backup).")
    return manifest


def load_checkpoint(directory, accelerator, model, optimizer, scheduler,
                    fingerprint: dict | None = None) -> tuple[int, History]:
    """Restore the `latest` checkpoint in `directory`, after checking its files and, given the new run's
    `fingerprint`, that it is the same run; returns (epochs done, history so far) (lesson 05).

    `epochs` may differ from the run's: the schedule then stretches (or shrinks) to the new total.
    """
    folder = latest_checkpoint(Path(directory))
    manifest = verified_manifest(folder, accelerator.process_index)
    if fingerprint is not None:
        problems = resume_problems(manifest.get("fingerprint", {}), fingerprint, manifest["epoch"])
        if problems:
            raise CheckpointError(f"Cannot resume from {folder}: {'; '.join(problems)}; resume with what the run "
                                  "was trained with, or start a new run with overwrite=True or another checkpoint_dir.")
    with reading(folder / MODEL_FILE):
        load_model(plain_model(accelerator, model), str(folder / MODEL_FILE))
    with reading(folder / STATE_FILE):
        state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        follow_schedule(optimizer, scheduler)
    rng_file = folder / f"rng-{accelerator.process_index}.pt"
    with reading(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=True, map_location="cpu"))
    history = History(rows=state["history"])
    return history.rows[-1]["epoch"], history


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Set each group's lr to where `scheduler` (a LambdaLR) is now: on its curve for this run's length (lesson 05)."""
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)


@contextlib.contextmanager
def reading(file: Path):
    """Turn any failure to read `file` into one sentence naming it (lesson 05)."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - torch, safetensors and json fail in many ways; all mean the same
        raise CheckpointError(f"{file} could not be read ({first_line(error)}): it is damaged or not part of a "
                              "checkpoint of this kit, so start afresh with overwrite=True.") from None


def first_line(error: BaseException) -> str:
    """`TypeName: what went wrong` in a few words, for a one-sentence report of `error` (lesson 05)."""
    if isinstance(error, pickle.UnpicklingError):  # torch's weights_only refusal: several sentences, with colours
        return f"{type(error).__name__}: it holds Python objects, not only tensors and numbers, and is not unpickled"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


@contextlib.contextmanager
def left_as_it_was(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Train freely inside the block; afterwards the model's weights and train/eval modes, the optimizer's state
    and learning rates, and the random generators are as they were before, and no gradients are left (lesson 05).
    The weights wait in CPU memory, so the block has all of the GPU's memory to itself."""
    saved_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    saved_modes = {module: module.training for module in model.modules()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    with kept_random_state():
        try:
            yield
        finally:
            model.load_state_dict(saved_weights)
            for module, training in saved_modes.items():
                module.train(training)
            model.zero_grad(set_to_none=True)
            if optimizer is not None:
                optimizer.load_state_dict(saved_optimizer)
