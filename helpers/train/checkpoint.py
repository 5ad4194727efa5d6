"""Checkpoints of a `fit()` run (lesson 05): one folder per epoch written atomically, resume, the best epoch's weights."""
from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_model, save_model

from helpers.train.history import History


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
            temporary = self.folder / "model.safetensors.tmp"
            save_model(module, str(temporary))
            os.replace(temporary, self.folder / "model.safetensors")
        self.accelerator.wait_for_everyone()

    def restore(self, model: torch.nn.Module) -> None:
        module = plain_model(self.accelerator, model)
        if self.state is not None:
            module.load_state_dict(self.state)
            return
        file = self.folder / "model.safetensors" if self.folder is not None else None
        if file is None or not file.exists():
            raise FileNotFoundError(
                "The best epoch was trained before this resume and its weights were not saved: "
                "resume with restore_best=True only when the first call used it too."
            )
        load_model(module, str(file))


def rng_state() -> dict:


    """The state of every random generator `fit()` uses: Python, NumPy, PyTorch and CUDA (lesson 05)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:


    """Put back the random generators' state saved by `rng_state` (lesson 05)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, accelerator, model, optimizer, scheduler, history: History) -> Path:
    """Write the epoch's checkpoint into a new folder, then point `latest` at it (both atomic) (lesson 05)."""
    directory = Path(directory)
    epoch = history.rows[-1]["epoch"]
    final = directory / f"epoch-{epoch:04d}"
    staging = directory / f".epoch-{epoch:04d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_model(plain_model(accelerator, model), str(staging / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history.rows},
            staging / "training_state.pt",
        )
    accelerator.wait_for_everyone()
    torch.save(rng_state(), staging / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        write_atomically(directory / "latest", final.name)
        for old in directory.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def write_atomically(path: Path, text: str) -> None:


    """Write `text` to `path` through a temporary file, so a reader never sees half of it (lesson 05)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_checkpoint(directory, accelerator, model, optimizer, scheduler) -> tuple[int, History]:
    """Restore the `latest` checkpoint in `directory`; returns (epochs done, history so far) (lesson 05)."""
    pointer = Path(directory) / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"No checkpoint in {directory}: train once with checkpoint_dir set, or use resume=False.")
    folder = Path(directory) / pointer.read_text().strip()
    load_model(plain_model(accelerator, model), str(folder / "model.safetensors"))
    state = torch.load(folder / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = folder / f"rng-{accelerator.process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    history = History(rows=state["history"])
    return history.rows[-1]["epoch"], history


@contextlib.contextmanager
def left_as_it_was(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Train freely inside the block; afterwards the model's weights and train/eval modes, the optimizer's state
    and learning rates, and the random generators are as they were before, and no gradients are left (lesson 05).
    The weights wait in CPU memory, so the block has all of the GPU's memory to itself."""
    saved_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    saved_modes = {module: module.training for module in model.modules()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    saved_rng = rng_state()
    try:
        yield
    finally:
        model.load_state_dict(saved_weights)
        for module, training in saved_modes.items():
            module.train(training)
        model.zero_grad(set_to_none=True)
        if optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
        set_rng_state(saved_rng)
