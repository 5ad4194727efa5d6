"""`fit()`: the course's training loop on Hugging Face Accelerate (lesson 05).

The same code runs on a CPU, one GPU, or several processes started by `torchrun` /
`accelerate launch`. It computes the loss itself (so MixUp/CutMix soft targets work),
uses AdamW with no weight decay on norms, biases, position embeddings and the CLS token
(or SGD with momentum), a warmup + cosine schedule, gradient accumulation and clipping,
autocast on a GPU, a checkpoint per epoch, `resume=True`, early stopping and best-epoch
selection on validation accuracy, and optionally `torch.compile`.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from helpers.data.loaders import make_loader
from helpers.profiles import Settings
from helpers.progress import progress_bar
from helpers.train.checkpoint import BestWeights, load_checkpoint, save_checkpoint
from helpers.train.device_images import DeviceImages
from helpers.train.history import History
from helpers.train.optim import make_optimizer, make_scheduler, parameter_groups, run_steps


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class ids (shape [B]) or soft targets (shape [B, C], rows sum to 1) (lesson 05)."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    if targets.shape != logits.shape:
        raise ValueError(
            f"Soft targets have shape {tuple(targets.shape)} but the logits have {tuple(logits.shape)}: "
            "give one probability per class."
        )
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def logits_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers image classifier (`.logits`) or of a module that returns a tensor (lesson 05)."""
    output = model(images)
    return output if isinstance(output, torch.Tensor) else output.logits


def mixed_precision_for(settings: Settings) -> tuple[str, str]:
    """The autocast mode `fit()` uses here ('no', 'bf16' or 'fp16') and why (lesson 05)."""
    if not torch.cuda.is_available():
        return "no", "no CUDA GPU: a CPU gains nothing from bf16 autocast here, so training stays in float32"
    if settings.precision == "no":
        return "no", "precision='no' was asked for: float32 on the GPU"
    if settings.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "this GPU has no bf16: fp16 autocast, with a gradient scaler against underflow"
    if settings.precision == "fp16":
        return "fp16", "fp16 autocast, with a gradient scaler against underflow"
    return "bf16", "bf16 autocast: float32's range, no gradient scaler needed; weights and optimizer stay float32"


def make_accelerator(settings: Settings) -> Accelerator:
    """An Accelerator for these settings: CPU when no CUDA (also under torchrun), autocast only on a GPU (lesson 05)."""
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision_for(settings)[0],
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
    optimizer: str = "adamw",
    schedule: str = "warmup_cosine",
    patience: int | None = None,
    restore_best: bool = False,
    torch_compile: bool | str = False,
    **overrides,
) -> History:
    """Train `model` on `train_set`, validating on `val_set` after each epoch; return the History (lesson 05).

    `overrides` replace settings by name (e.g. `epochs=3`). `param_groups` replaces the
    default AdamW groups (e.g. layer-wise lr decay). `batch_transform(images, labels)`
    returns `(images, targets)` for each batch (MixUp/CutMix). With `checkpoint_dir`, a
    checkpoint is written after every epoch and `resume=True` continues from the last one.
    `stop_after=n` ends this call after n epochs, as an interruption would (resume later).

    `optimizer`: 'adamw' or 'sgd' (momentum 0.9); `schedule`: 'warmup_cosine', 'linear' or
    'constant' (all after the warmup). `patience=n` stops once validation accuracy has not
    improved for n epochs; `restore_best=True` ends with the weights of the best epoch (also
    written to `checkpoint_dir/best` when there is one). `torch_compile=True` compiles the
    model with torch.compile (or give a backend name, e.g. 'aot_eager'). Datasets may be
    `DeviceImages` (batches prepared on the GPU).
    """
    settings = dataclasses.replace(settings, **overrides)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("The training and validation sets must each hold at least one image.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be at least 1 epoch (or None for no early stopping), got {patience}.")
    accelerator = accelerator or make_accelerator(settings)
    seed_everything(settings.seed + accelerator.process_index)

    shuffle_generator = torch.Generator()
    train_loader = loader_for(train_set, settings.batch_size, shuffle_generator=shuffle_generator,
                              num_workers=settings.num_workers)
    val_loader = loader_for(val_set, settings.batch_size, num_workers=settings.num_workers)
    steps = run_steps(len(train_set), settings, accelerator.num_processes)
    optimizer = make_optimizer(optimizer, param_groups or parameter_groups(model, settings.weight_decay),
                               settings.lr)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    scheduler = make_scheduler(optimizer, schedule, steps.warmup, steps.total)
    model = maybe_compile(model, torch_compile)
    best = BestWeights(accelerator, Path(checkpoint_dir) / "best" if checkpoint_dir is not None else None)

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
        if restore_best and history.epochs_since_best() == 0:
            best.keep(model)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, accelerator, model, optimizer, scheduler, history)
        if patience is not None and history.epochs_since_best() >= patience and epoch + 1 < settings.epochs:
            history.stopped_early = True
            break
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
            break
    if restore_best and history.epochs_since_best() > 0:
        best.restore(model)
    model.eval()
    return history


def maybe_compile(model: torch.nn.Module, torch_compile: bool | str) -> torch.nn.Module:
    """`model` itself (False), compiled with inductor (True), or compiled with the backend named (lesson 05)."""
    if not torch_compile:
        return model
    return torch.compile(model, backend="inductor" if torch_compile is True else torch_compile)


def loader_for(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
               num_workers: int = 0):
    """The DataLoader `fit()` uses: `DeviceImages` serve whole batches themselves, other datasets go through
    `helpers.data.make_loader` (lesson 05)."""
    if isinstance(dataset, DeviceImages):
        return dataset.loader(batch_size, shuffle_generator=shuffle_generator)
    return make_loader(dataset, batch_size, shuffle_generator=shuffle_generator, num_workers=num_workers)


def run_train_epoch(model, loader, optimizer, scheduler, accelerator, settings, batch_transform,
                    description, progress) -> float:
    """One pass over `loader`; returns the mean training loss (lesson 05)."""
    total, count = torch.zeros((), device=accelerator.device), 0
    bar = progress_bar(loader, desc=description, leave=False, disable=not (progress and accelerator.is_main_process))
    for images, targets in bar:
        loss = train_step(model, images, targets, optimizer, scheduler, accelerator, settings.max_grad_norm,
                          batch_transform)
        total += loss * len(images)
        count += len(images)
    return float(accelerator.reduce(total, "sum")) / (count * accelerator.num_processes)


def train_step(model, images, targets, optimizer, scheduler, accelerator, max_grad_norm=None,
               batch_transform=None) -> torch.Tensor:
    """One micro-batch of `fit()`: forward, loss, backward; on the last micro-batch of an accumulation,
    clip, step the optimizer and the schedule (`scheduler` may be None). Returns the loss, detached (lesson 05)."""
    with accelerator.accumulate(model):
        if batch_transform is not None:
            images, targets = batch_transform(images, targets)
        loss = cross_entropy(logits_of(model, images), targets)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients and scheduler is not None:
            scheduler.step()
    return loss.detach()


@torch.inference_mode()
def validate(model, loader, accelerator) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over `loader`, gathered over all processes (lesson 05)."""
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
    """Seed Python, NumPy and PyTorch (CPU and CUDA) (lesson 05)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
