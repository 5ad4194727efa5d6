"""`fit()`: the course's training loop on Hugging Face Accelerate.

The same code runs on a CPU, one GPU, or several processes started by `torchrun` /
`accelerate launch`. It computes the loss itself (so MixUp/CutMix soft targets work),
uses AdamW with no weight decay on norms, biases, position embeddings and the CLS token,
a warmup + cosine schedule, gradient accumulation and clipping, bf16/fp16 autocast on a
GPU, a checkpoint per epoch written atomically, and `resume=True`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from helpers.data import make_loader
from helpers.profiles import Settings

NO_DECAY_NAME_PARTS = ("bias", "norm", "position_embeddings", "cls_token", "pos_embed")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters AdamW should not decay: biases, norms, position embeddings, CLS token."""
    return param.ndim <= 1 or any(part in name.lower() for part in NO_DECAY_NAME_PARTS)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups of the trainable parameters: decayed, and not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to each group's lr, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class ids (shape [B]) or soft targets (shape [B, C], rows sum to 1)."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    if targets.shape != logits.shape:
        raise ValueError(
            f"Soft targets have shape {tuple(targets.shape)} but the logits have {tuple(logits.shape)}: "
            "give one probability per class."
        )
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def logits_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers image classifier (`.logits`) or of a module that returns a tensor."""
    output = model(images)
    return output if isinstance(output, torch.Tensor) else output.logits


@dataclass
class History:
    """Per-epoch records of a run: epoch, train_loss, val_loss, val_accuracy, lr, seconds."""

    rows: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        return [row[name] for row in self.rows]

    @property
    def best(self) -> dict:
        """The row with the highest validation accuracy."""
        return max(self.rows, key=lambda row: row["val_accuracy"])

    def __str__(self) -> str:
        header = "epoch  train_loss  val_loss  val_acc        lr  seconds"
        lines = [
            f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>8.4f}  {r['val_accuracy']:>7.2%}"
            f"  {r['lr']:>8.2e}  {r['seconds']:>7.1f}"
            for r in self.rows
        ]
        return "\n".join([header, *lines])

    def plot(self, title: str = ""):
        """Loss and validation accuracy per epoch, as a matplotlib Figure."""
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
        epochs = self.column("epoch")
        ax_loss.plot(epochs, self.column("train_loss"), marker="o", label="train")
        ax_loss.plot(epochs, self.column("val_loss"), marker="o", label="validation")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_loss.legend()
        ax_acc.plot(epochs, self.column("val_accuracy"), marker="o", color="C2")
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


def make_accelerator(settings: Settings) -> Accelerator:
    """An Accelerator for these settings: CPU when no CUDA (also under torchrun), autocast only on a GPU."""
    on_gpu = torch.cuda.is_available()
    return Accelerator(
        cpu=not on_gpu,
        mixed_precision=settings.precision if on_gpu else "no",
        gradient_accumulation_steps=settings.grad_accum,
    )


def fit(
    model: torch.nn.Module,
    train_set,
    val_set,
    settings: Settings,
    *,
    param_groups: list[dict] | None = None,
    batch_transform=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    **overrides,
) -> History:
    """Train `model` on `train_set`, validating on `val_set` after each epoch; return the History.

    `overrides` replace settings by name (e.g. `epochs=3`). `param_groups` replaces the
    default AdamW groups (e.g. layer-wise lr decay). `batch_transform(images, labels)`
    returns `(images, targets)` for each batch (MixUp/CutMix). With `checkpoint_dir`, a
    checkpoint is written after every epoch and `resume=True` continues from the last one.
    `stop_after=n` ends this call after n epochs, as an interruption would (resume later).
    """
    settings = dataclasses.replace(settings, **overrides)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("The training and validation sets must each hold at least one image.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    accelerator = accelerator or make_accelerator(settings)
    seed_everything(settings.seed + accelerator.process_index)

    shuffle_generator = torch.Generator()
    train_loader = make_loader(train_set, settings.batch_size, shuffle_generator=shuffle_generator,
                               num_workers=settings.num_workers)
    val_loader = make_loader(val_set, settings.batch_size, num_workers=settings.num_workers)
    optimizer = torch.optim.AdamW(
        param_groups or parameter_groups(model, settings.weight_decay), lr=settings.lr
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = warmup_cosine(optimizer, round(settings.warmup_ratio * total_steps), total_steps)

    history, start_epoch = History(), 0
    if resume:
        start_epoch, history = load_checkpoint(checkpoint_dir, accelerator, model, optimizer, scheduler)

    for epoch in range(start_epoch, settings.epochs):
        shuffle_generator.manual_seed(settings.seed * 1000 + epoch)
        started = time.perf_counter()
        model.train()
        train_loss = run_train_epoch(
            model, train_loader, optimizer, scheduler, accelerator, settings, batch_transform,
            description=f"epoch {epoch + 1}/{settings.epochs}", progress=progress,
        )
        val_loss, val_accuracy = validate(model, val_loader, accelerator)
        history.rows.append(dict(
            epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_accuracy,
            lr=scheduler.get_last_lr()[0], seconds=time.perf_counter() - started,
        ))
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, accelerator, model, optimizer, scheduler, history)
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
            break
    model.eval()
    return history


def run_train_epoch(model, loader, optimizer, scheduler, accelerator, settings, batch_transform,
                    description, progress) -> float:
    """One pass over `loader`; returns the mean training loss."""
    total, count = torch.zeros((), device=accelerator.device), 0
    bar = tqdm(loader, desc=description, leave=False, disable=not (progress and accelerator.is_main_process))
    for images, targets in bar:
        with accelerator.accumulate(model):
            if batch_transform is not None:
                images, targets = batch_transform(images, targets)
            loss = cross_entropy(logits_of(model, images), targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                scheduler.step()
        total += loss.detach() * len(images)
        count += len(images)
    return float(accelerator.reduce(total, "sum")) / (count * accelerator.num_processes)


@torch.inference_mode()
def validate(model, loader, accelerator) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over `loader`, gathered over all processes."""
    model.eval()
    losses, hits = [], []
    for images, labels in loader:
        logits = logits_of(model, images)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        loss, hit = accelerator.gather_for_metrics((loss, logits.argmax(-1) == labels))
        losses.append(loss)
        hits.append(hit)
    return torch.cat(losses).mean().item(), torch.cat(hits).float().mean().item()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, accelerator, model, optimizer, scheduler, history: History) -> Path:
    """Write the epoch's checkpoint into a new folder, then point `latest` at it (both atomic)."""
    directory = Path(directory)
    epoch = history.rows[-1]["epoch"]
    final = directory / f"epoch-{epoch:04d}"
    staging = directory / f".epoch-{epoch:04d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_model(accelerator.unwrap_model(model), str(staging / "model.safetensors"))
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
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_checkpoint(directory, accelerator, model, optimizer, scheduler) -> tuple[int, History]:
    """Restore the `latest` checkpoint in `directory`; returns (epochs done, history so far)."""
    pointer = Path(directory) / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"No checkpoint in {directory}: train once with checkpoint_dir set, or use resume=False.")
    folder = Path(directory) / pointer.read_text().strip()
    load_model(accelerator.unwrap_model(model), str(folder / "model.safetensors"))
    state = torch.load(folder / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = folder / f"rng-{accelerator.process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    history = History(rows=state["history"])
    return history.rows[-1]["epoch"], history

