"""`fit()`: the course's training loop on Hugging Face Accelerate (lesson 05).

The same code runs on a CPU, one GPU, or several processes started by `torchrun` /
`accelerate launch`. It computes the loss itself (so MixUp/CutMix soft targets work),
uses AdamW with no weight decay on norms, biases, position embeddings and the CLS token
(or SGD with momentum), a warmup + cosine schedule, gradient accumulation and clipping,
autocast on a GPU, a checkpoint per epoch, `resume=True`, early stopping and best-epoch
selection on validation accuracy, and optionally `torch.compile`.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import compile_regions

from helpers.data.loaders import make_loader
from helpers.hardware import enable_gradient_checkpointing, precision_for, read_device
from helpers.profiles import Settings, with_overrides
from helpers.progress import progress_bar
from helpers.train.checkpoint import BestWeights, latest_checkpoint, load_checkpoint, plain_model, save_checkpoint
from helpers.train.device_images import DeviceImages
from helpers.train.fingerprint import run_fingerprint
from helpers.train.guards import (
    NonFiniteLoss,
    check_accumulation_window,
    check_arguments,
    check_model_input,
    diverged,
    require_finite,
)
from helpers.train.history import History
from helpers.train.optim import make_optimizer, make_scheduler, parameter_groups, run_steps
from helpers.train.rundir import claimed_run_folder


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
    """The autocast mode `fit()` uses here ('no', 'bf16' or 'fp16') and why: bf16 only where the GPU computes
    it natively, fp16 with a gradient scaler on compute capability 7.x (`hardware.precision_for`) (lesson 05)."""
    if not torch.cuda.is_available():
        return "no", "no CUDA GPU: a CPU gains nothing from bf16 autocast here, so training stays in float32"
    return precision_for(read_device(), settings.precision)


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
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    optimizer: str = "adamw",
    schedule: str = "warmup_cosine",
    patience: int | None = None,
    restore_best: bool = False,
    torch_compile: bool | str = "auto",
    **overrides,
) -> History:
    """Train `model` on `train_set`, validating on `val_set` after each epoch; return the History (lesson 05).

    `overrides` replace settings by name (e.g. `epochs=3`), checked like `profiles.resolve`'s.
    `param_groups` replaces the default AdamW groups (e.g. layer-wise lr decay).
    `batch_transform(images, labels)` returns `(images, targets)` for each batch (MixUp/CutMix).

    With `checkpoint_dir`, a checkpoint is written after every epoch and `resume=True` continues
    from the last one, after checking it is the same run (see `helpers.train.fingerprint`); a
    folder holding an earlier run is refused unless `overwrite=True`, and one process at a time
    holds the folder. `stop_after=n` ends this call after n epochs, as an interruption would.

    `optimizer`: 'adamw' or 'sgd' (momentum 0.9); `schedule`: 'warmup_cosine', 'linear' or
    'constant' (all after the warmup). `patience=n` stops once validation accuracy has not
    improved for n epochs; `restore_best=True` ends with the weights of the best epoch (also
    written to `checkpoint_dir/best` when there is one). `torch_compile=True` compiles the
    model with torch.compile (or give a backend name, e.g. 'aot_eager'); the default 'auto'
    compiles on a GPU only when `COMPILE_ON_GPU` says so (see `maybe_compile`). Datasets may be
    `DeviceImages` (batches prepared on the GPU). `gradient_checkpointing=True` (a setting) recomputes
    activations in the backward pass to save memory (transformers models only). Before the first step
    `fit()` refuses integer pixels, a head that does not match the classes and a `grad_accum` longer
    than an epoch; a loss that is not finite stops it with the last good checkpoint kept.
    """
    settings = with_overrides(settings, **overrides)
    check_arguments(train_set, val_set, checkpoint_dir, resume, overwrite, patience)
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    accelerator = accelerator or make_accelerator(settings)
    check_accumulation_window(len(train_set), settings, accelerator.num_processes)
    with claimed_run_folder(checkpoint_dir, accelerator, resume=resume, overwrite=overwrite):
        seed_everything(settings.seed + accelerator.process_index)
        run = prepare_run(model, train_set, val_set, settings, accelerator, param_groups, optimizer, schedule)
        check_model_input(plain_model(accelerator, run.model), train_set, batch_transform, accelerator, logits_of)
        run.model = maybe_compile(run.model, torch_compile)
        if checkpoint_dir is not None:
            run.checkpoint_dir = Path(checkpoint_dir).expanduser()
            run.fingerprint = run_fingerprint(plain_model(accelerator, run.model), train_set, val_set, run.optimizer,
                                              settings, optimizer, schedule, accelerator.num_processes)
        if resume:
            run.history = load_checkpoint(run.checkpoint_dir, accelerator, run.model, run.optimizer, run.scheduler,
                                          run.fingerprint)[1]
        best = BestWeights(accelerator, run.checkpoint_dir / "best" if run.checkpoint_dir else None)
        train_epochs(run, best, batch_transform, stop_after, patience, restore_best, progress)
    if restore_best and run.history.epochs_since_best() > 0:
        best.restore(run.model)
    run.model.eval()
    plain_model(run.accelerator, run.model).eval()  # the user's own module too: a compiled model may be a copy around it
    return run.history


@dataclass
class Run:
    """What one `fit()` call trains with, after `Accelerator.prepare`, and what it has done so far (lesson 05)."""

    settings: Settings
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    shuffle_generator: torch.Generator
    history: History = field(default_factory=History)
    checkpoint_dir: Path | None = None
    fingerprint: dict | None = None


def prepare_run(model, train_set, val_set, settings: Settings, accelerator: Accelerator, param_groups,
                optimizer: str, schedule: str) -> Run:
    """The loaders, optimizer and schedule of a `fit()` call, prepared by `accelerator` (lesson 05)."""
    shuffle_generator = torch.Generator()
    train_loader = loader_for(train_set, settings.batch_size, shuffle_generator=shuffle_generator,
                              num_workers=settings.num_workers)
    val_loader = loader_for(val_set, settings.batch_size, num_workers=settings.num_workers)
    steps = run_steps(len(train_set), settings, accelerator.num_processes)
    optimizer = make_optimizer(optimizer, param_groups or parameter_groups(model, settings.weight_decay),
                               settings.lr)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    scheduler = make_scheduler(optimizer, schedule, steps.warmup, steps.total)
    return Run(settings, accelerator, model, optimizer, scheduler, train_loader, val_loader, shuffle_generator)


def train_epochs(run: Run, best: BestWeights, batch_transform, stop_after, patience, restore_best,
                 progress) -> None:
    """The epochs of `fit()` from where `run.history` ends: train, validate, keep the best, checkpoint, and
    stop early, after `stop_after` epochs, or on a loss that is not finite (lesson 05)."""
    settings, accelerator, start_epoch = run.settings, run.accelerator, len(run.history)
    for epoch in range(start_epoch, settings.epochs):
        run.shuffle_generator.manual_seed(settings.seed * 1000 + epoch)
        started = time.perf_counter()
        run.model.train()
        try:
            train_loss = run_train_epoch(run.model, run.train_loader, run.optimizer, run.scheduler, accelerator,
                                         settings, batch_transform, f"epoch {epoch + 1}/{settings.epochs}", progress)
        except NonFiniteLoss as error:
            last = latest_checkpoint(run.checkpoint_dir) if run.history.rows and run.checkpoint_dir else None
            raise diverged(error, epoch + 1, settings, run.checkpoint_dir, last) from None
        val_loss, val_accuracy = validate(run.model, run.val_loader, accelerator)
        run.history.rows.append(dict(
            epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_accuracy,
            lr=run.scheduler.get_last_lr()[0], seconds=time.perf_counter() - started,
        ))
        if restore_best and run.history.epochs_since_best() == 0:
            best.keep(run.model)
        if run.checkpoint_dir is not None:
            save_checkpoint(run.checkpoint_dir, accelerator, run.model, run.optimizer, run.scheduler, run.history,
                            run.fingerprint)
        if patience is not None and run.history.epochs_since_best() >= patience and epoch + 1 < settings.epochs:
            run.history.stopped_early = True
            break
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
            break


COMPILE_ON_GPU = False
"""Whether `fit()`'s default (`torch_compile="auto"`) compiles on a CUDA GPU (a CPU always trains eagerly).
Decided by a GPU run of `bench/gpu_throughput.py`: True once its "kit compiled" row beats "kit eager"."""


def compile_backend(torch_compile: bool | str, device: torch.device) -> str | None:
    """The torch.compile backend `fit(torch_compile=...)` uses on `device`, or None for eager (lesson 05):
    True is inductor, a string names the backend, 'auto' follows `COMPILE_ON_GPU` on a GPU."""
    if torch_compile == "auto":
        torch_compile = COMPILE_ON_GPU and torch.device(device).type == "cuda"
    if not torch_compile:
        return None
    return "inductor" if torch_compile is True else torch_compile


def maybe_compile(model: torch.nn.Module, torch_compile: bool | str) -> torch.nn.Module:
    """`model` itself when `compile_backend` says eager, else `model` compiled region by region (lesson 05).

    Each encoder layer is compiled on its own, and one graph serves all of them; the modules around
    the layers are compiled too, while the model's own forward runs eagerly (PyTorch's regional
    compilation, by `accelerate.utils.compile_regions`; a model without repeated blocks is compiled
    whole). That forward is where transformers builds the attention mask: traced whole, it became an
    all-true mask in every layer (transformers 5.17; later ones under torch < 2.14), and
    `scaled_dot_product_attention` given a mask cannot use flash attention. Shapes stay static: a
    smaller last batch gets graphs of its own, up to torch's limit of 8 per function, beyond which
    that shape runs eagerly. The result is a copy of the outer modules around the same parameters;
    `plain_model` returns the original.
    """
    parameter = next(model.parameters(), None)
    backend = compile_backend(torch_compile, parameter.device if parameter is not None else "cpu")
    if backend is None:
        return model
    return compile_regions(model, backend=backend, dynamic=False)


def loader_for(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
               num_workers: int = 0):
    """The DataLoader `fit()` uses: `DeviceImages` serve whole batches themselves, other datasets go through
    `helpers.data.make_loader` (lesson 05).

    Workers end with each pass: a training loader's workers start afresh every epoch, seeded from
    `shuffle_generator` (which `fit()` seeds per epoch), so a resumed run draws the same random
    augmentations as an uninterrupted one; and in a Jupyter kernel no finished `fit()` leaves
    workers behind (the next loader's forked workers would die).
    """
    if isinstance(dataset, DeviceImages):
        return dataset.loader(batch_size, shuffle_generator=shuffle_generator)
    return make_loader(dataset, batch_size, shuffle_generator=shuffle_generator, num_workers=num_workers,
                       persistent_workers=False)


class AccumulationWindow:
    """The micro-batches of one optimizer step under gradient accumulation, weighed by their images, so that a
    window holding a short last batch still steps on the mean loss over its images (lesson 05).

    Accelerate divides each micro-batch's loss by `grad_accum`: right when every micro-batch is full. `weigh`
    scales a loss by its share of a full batch, and `close` rescales the summed gradients by the window's
    full size over its actual images (a no-op for a full window)."""

    def __init__(self, batch_size: int, grad_accum: int):
        self.batch_size, self.full, self.images = batch_size, batch_size * grad_accum, 0

    def weigh(self, loss: torch.Tensor, images: int) -> torch.Tensor:
        self.images += images
        return loss * (images / self.batch_size)

    def close(self, parameters) -> None:
        if self.images != self.full:
            grads = [p.grad for p in parameters if p.grad is not None]
            torch._foreach_mul_(grads, self.full / self.images)
        self.images = 0


def run_train_epoch(model, loader, optimizer, scheduler, accelerator, settings, batch_transform,
                    description, progress) -> float:
    """One pass over `loader`; returns the mean training loss (lesson 05)."""
    total, count = torch.zeros((), device=accelerator.device), 0
    window = AccumulationWindow(settings.batch_size, settings.grad_accum) if settings.grad_accum > 1 else None
    bar = progress_bar(loader, desc=description, leave=False, disable=not (progress and accelerator.is_main_process))
    for images, targets in bar:
        loss = train_step(model, images, targets, optimizer, scheduler, accelerator, settings.max_grad_norm,
                          batch_transform, window)
        total += loss * len(images)
        count += len(images)
    return float(accelerator.reduce(total, "sum")) / (count * accelerator.num_processes)


def train_step(model, images, targets, optimizer, scheduler, accelerator, max_grad_norm=None,
               batch_transform=None, window: AccumulationWindow | None = None) -> torch.Tensor:
    """One micro-batch of `fit()`: forward, loss, backward; on the last micro-batch of an accumulation,
    clip, step the optimizer and the schedule (`scheduler` may be None). Returns the loss, detached; a loss that
    is not finite raises `NonFiniteLoss` before the backward pass (lesson 05)."""
    with accelerator.accumulate(model):
        if batch_transform is not None:
            images, targets = batch_transform(images, targets)
        loss = cross_entropy(logits_of(model, images), targets)
        require_finite(loss, accelerator)  # before backward: the weights stay as the last good step left them
        accelerator.backward(loss if window is None else window.weigh(loss, len(images)))
        if accelerator.sync_gradients and window is not None:
            window.close(model.parameters())
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients and scheduler is not None and not accelerator.optimizer_step_was_skipped:
            scheduler.step()  # fp16: the gradient scaler skips a step with inf/NaN gradients, the schedule waits
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
