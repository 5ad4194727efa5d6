"""`fit()`: the course's training loop on Hugging Face Accelerate, and the tools around it.

The same code runs on a CPU, one GPU, or several processes started by `torchrun` /
`accelerate launch`. It computes the loss itself (so MixUp/CutMix soft targets work),
uses AdamW with no weight decay on norms, biases, position embeddings and the CLS token
(or SGD with momentum, the ViT paper's fine-tuning recipe), a warmup + cosine schedule
(or linear, or constant), gradient accumulation and clipping, bf16 autocast on a GPU
(fp16 with a gradient scaler where bf16 is missing), a checkpoint per epoch written
atomically, `resume=True`, early stopping and best-epoch selection on validation
accuracy, and optionally `torch.compile`.

Around it: `lr_find` (the learning-rate range test), `gradients` (accumulation shown
numerically), `DeviceImages` (uint8 images resident on the GPU, augmented and resized
there), `measure_training_throughput`, `fit_with_trainer` (the same fine-tune through
`transformers.Trainer`), `run_distributed_demo` (fit() under torchrun), and the
exercise checkers of lesson 05.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from helpers.data import ImageSpec, LabeledImages, make_loader
from helpers.profiles import Settings

NO_DECAY_NAME_PARTS = ("bias", "norm", "position_embeddings", "cls_token", "pos_embed")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "linear", "constant")
SGD_MOMENTUM = 0.9


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


def make_optimizer(name: str, groups, lr: float) -> torch.optim.Optimizer:
    """'adamw' (fused on a GPU) or 'sgd' (momentum 0.9, the ViT paper's fine-tuning optimizer) over `groups`."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True if torch.cuda.is_available() else None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"Unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}.")


def lr_factor(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """The multiple of the peak lr at optimizer step `step`: linear warmup from 0, then `schedule`'s shape.

    'warmup_cosine' decays along a half cosine to 0 at `total_steps`, 'linear' in a straight
    line to 0, 'constant' stays at the peak.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "warmup_cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant":
        return 1.0
    raise ValueError(f"Unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}.")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """A LambdaLR that follows `lr_factor(schedule, ...)` on every parameter group."""
    lr_factor(schedule, 0, 0, 1)  # an unknown name fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, warmup_steps, total_steps)
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to each group's lr, then cosine decay to 0 at `total_steps`."""
    return make_scheduler(optimizer, "warmup_cosine", warmup_steps, total_steps)


@dataclass(frozen=True)
class RunSteps:
    """How many optimizer steps a run makes: per epoch, in all, and of warmup."""

    per_epoch: int
    total: int
    warmup: int


def run_steps(num_images: int, settings: Settings, num_processes: int = 1) -> RunSteps:
    """The optimizer steps `fit()` makes on `num_images` training images with these settings.

    Each process sees ceil(batches / processes) batches; every `grad_accum` of them (and the
    last of an epoch) end in one optimizer step.
    """
    batches = math.ceil(math.ceil(num_images / settings.batch_size) / num_processes)
    per_epoch = math.ceil(batches / settings.grad_accum)
    total = per_epoch * settings.epochs
    return RunSteps(per_epoch, total, round(settings.warmup_ratio * total))


def schedule_curve(schedule: str, lr: float, steps: RunSteps) -> list[float]:
    """The lr at every optimizer step of a run, as `make_scheduler` sets it."""
    return [lr * lr_factor(schedule, step, steps.warmup, steps.total) for step in range(steps.total)]


def plot_schedules(lr: float, steps: RunSteps, schedules=SCHEDULES):
    """The lr of each schedule over the steps of one run, with the warmup shaded (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    for schedule in schedules:
        ax.plot(range(steps.total), schedule_curve(schedule, lr, steps), label=schedule)
    if steps.warmup:
        ax.axvspan(0, steps.warmup, color="grey", alpha=0.15, label="warmup")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"{steps.total} steps ({steps.per_epoch} per epoch), peak lr {lr:g}")
    ax.legend()
    fig.tight_layout()
    return fig


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
    stopped_early: bool = False  # early stopping ended the run before its last epoch

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
        if self.stopped_early:
            lines.append(f"stopped early: no better validation accuracy since epoch {self.best['epoch']}")
        return "\n".join([header, *lines])

    def epochs_since_best(self) -> int:
        """Epochs run after the one with the best validation accuracy (0 when the last is the best)."""
        return self.rows[-1]["epoch"] - self.best["epoch"]

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


def mixed_precision_for(settings: Settings) -> tuple[str, str]:
    """The autocast mode `fit()` uses here ('no', 'bf16' or 'fp16') and why."""
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
    """An Accelerator for these settings: CPU when no CUDA (also under torchrun), autocast only on a GPU."""
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision_for(settings)[0],
        gradient_accumulation_steps=settings.grad_accum,
    )


def plain_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside whatever `prepare` and `torch.compile` wrapped around it."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


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
    """Train `model` on `train_set`, validating on `val_set` after each epoch; return the History.

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
    """`model` itself (False), compiled with inductor (True), or compiled with the backend named."""
    if not torch_compile:
        return model
    return torch.compile(model, backend="inductor" if torch_compile is True else torch_compile)


class BestWeights:
    """The weights of the best epoch so far: in memory, and in `folder` when given (so they survive a resume)."""

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


def loader_for(dataset, batch_size: int, *, shuffle_generator: torch.Generator | None = None,
               num_workers: int = 0):
    """The DataLoader `fit()` uses: `DeviceImages` serve whole batches themselves, other datasets go through
    `helpers.data.make_loader`."""
    if isinstance(dataset, DeviceImages):
        return dataset.loader(batch_size, shuffle_generator=shuffle_generator)
    return make_loader(dataset, batch_size, shuffle_generator=shuffle_generator, num_workers=num_workers)


def run_train_epoch(model, loader, optimizer, scheduler, accelerator, settings, batch_transform,
                    description, progress) -> float:
    """One pass over `loader`; returns the mean training loss."""
    total, count = torch.zeros((), device=accelerator.device), 0
    bar = tqdm(loader, desc=description, leave=False, disable=not (progress and accelerator.is_main_process))
    for images, targets in bar:
        loss = train_step(model, images, targets, optimizer, scheduler, accelerator, settings.max_grad_norm,
                          batch_transform)
        total += loss * len(images)
        count += len(images)
    return float(accelerator.reduce(total, "sum")) / (count * accelerator.num_processes)


def train_step(model, images, targets, optimizer, scheduler, accelerator, max_grad_norm=None,
               batch_transform=None) -> torch.Tensor:
    """One micro-batch of `fit()`: forward, loss, backward; on the last micro-batch of an accumulation,
    clip, step the optimizer and the schedule (`scheduler` may be None). Returns the loss, detached."""
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
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_checkpoint(directory, accelerator, model, optimizer, scheduler) -> tuple[int, History]:
    """Restore the `latest` checkpoint in `directory`; returns (epochs done, history so far)."""
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



# ---------------------------------------------------------------- learning-rate range test
@dataclass
class LRFinderResult:
    """Loss against learning rate from `lr_find`: raw, and smoothed with an exponential moving average."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]

    @property
    def lr_at_min(self) -> float:
        """The learning rate where the smoothed loss is lowest: past it, training becomes unstable."""
        return self.lrs[int(np.argmin(self.smoothed))]

    @property
    def suggestion(self) -> float:
        """One tenth of `lr_at_min`: still on the steep, falling part of the curve, safely below divergence."""
        return self.lr_at_min / 10

    def plot(self):
        """Loss against lr on a log axis, with the minimum and the suggestion marked (a pyplot Figure)."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        ax.plot(self.lrs, self.losses, color="C0", alpha=0.3, label="loss per step")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        ax.axvline(self.lr_at_min, color="C3", linestyle=":", label=f"minimum at {self.lr_at_min:.1e}")
        ax.axvline(self.suggestion, color="C2", linestyle="--", label=f"suggestion {self.suggestion:.1e}")
        low, high = min(self.smoothed), self.smoothed[0]
        ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
               ylim=(low - 0.1 * (high - low + 1e-3), high + 0.6 * (high - low + 1e-3)),
               title="learning-rate range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def lr_find(
    model: torch.nn.Module,
    train_set,
    settings: Settings,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    optimizer: torch.optim.Optimizer | str = "adamw",
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    batch_transform=None,
    progress: bool = True,
    **overrides,
) -> LRFinderResult:
    """The learning-rate range test (Smith 2017): train `num_steps` steps while the lr grows
    geometrically from `start_lr` to `end_lr`, recording the loss; stop early once the loss diverges.

    `optimizer` is a name from `OPTIMIZERS` (a fresh one over the default groups) or your own
    optimizer; every group is set to the swept lr. Afterwards the model's weights and train/eval
    modes, the optimizer's state and learning rates and the random number generators are exactly
    as they were before: the test changes nothing but where the model lives (its device) and, on
    a GPU, the autocast that Accelerate wraps around its forward (as `fit()` does too).
    """
    settings = dataclasses.replace(settings, **overrides)
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr, got start_lr={start_lr} and end_lr={end_lr}.")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 to draw a curve, got {num_steps}.")
    if len(train_set) == 0:
        raise ValueError("The training set must hold at least one image.")
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, parameter_groups(model, settings.weight_decay), start_lr)
    with left_as_it_was(model, optimizer):
        return sweep_learning_rates(model, train_set, settings, optimizer, start_lr, end_lr, num_steps, smoothing,
                                    diverge_factor, batch_transform, progress)


@contextlib.contextmanager
def left_as_it_was(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Train freely inside the block; afterwards the model's weights and train/eval modes, the optimizer's state
    and learning rates, and the random generators are as they were before, and no gradients are left."""
    saved_weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
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


def sweep_learning_rates(model, train_set, settings, optimizer, start_lr, end_lr, num_steps, smoothing,
                         diverge_factor, batch_transform, progress) -> LRFinderResult:
    """The loop of `lr_find`, without the restoring: one `train_step` per lr, batches drawn in a seeded order."""
    accelerator = make_accelerator(dataclasses.replace(settings, grad_accum=1))
    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = loader_for(train_set, settings.batch_size, shuffle_generator=generator, num_workers=settings.num_workers)
    prepared_model, prepared_optimizer, loader = accelerator.prepare(model, optimizer, loader)
    prepared_model.train()
    result = LRFinderResult([], [], [])
    average, batches = 0.0, iter(loader)
    for step in tqdm(range(num_steps), desc="lr range test", leave=False, disable=not progress):
        lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        loss = float(train_step(prepared_model, images, targets, prepared_optimizer, None, accelerator,
                                settings.max_grad_norm, batch_transform))
        if not math.isfinite(loss):
            break
        average = smoothing * average + (1 - smoothing) * loss
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(average / (1 - smoothing ** (step + 1)))
        if step > 0 and result.smoothed[-1] > diverge_factor * min(result.smoothed):
            break
    if len(result.lrs) < 2:
        raise RuntimeError(f"The loss diverged at once (lr {start_lr:g}): lower start_lr.")
    return result


def check_lr_choice(lr: float, finder: LRFinderResult) -> bool:
    """Exercise checker: True when `lr` is a sound pick from the range test, else AssertionError saying why.

    Sound means between 1/30 and 1/3 of the lr at the loss minimum: on the falling part of the
    curve, well below where the loss turns up.
    """
    low, high = finder.lr_at_min / 30, finder.lr_at_min / 3
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise AssertionError(f"A learning rate must be a positive number, got {lr!r}.")
    if lr > high:
        raise AssertionError(
            f"{lr:.1e} is too close to the minimum at {finder.lr_at_min:.1e}, where the loss is about to blow up: "
            "go about ten times lower than the minimum."
        )
    if lr < low:
        raise AssertionError(
            f"{lr:.1e} is more than 30 times below the minimum at {finder.lr_at_min:.1e}: training would crawl; "
            "pick about a tenth of the minimum."
        )
    print(f"Correct: {lr:.1e} lies on the falling part of the curve, about a decade below the minimum.")
    return True


# ---------------------------------------------------------------- gradient accumulation, numerically
def gradients(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
              micro_batches: int = 1) -> dict[str, torch.Tensor]:
    """The gradient of the mean loss over the batch, computed in `micro_batches` slices.

    Each slice's mean loss is weighted by its share of the batch before `backward()`, and the
    gradients add up across slices, which is what gradient accumulation does. The model runs in
    eval mode (no dropout draws), its `.grad`s are cleared afterwards and its mode restored.
    """
    if not 1 <= micro_batches <= len(images):
        raise ValueError(f"micro_batches must be between 1 and the batch size {len(images)}, got {micro_batches}.")
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for image_slice, target_slice in zip(images.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        loss = cross_entropy(logits_of(model, image_slice), target_slice)
        (loss * len(image_slice) / len(images)).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two dicts of tensors with the same keys."""
    if a.keys() != b.keys():
        raise ValueError("The two gradient dicts hold different parameters.")
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def check_accumulation(grad_accum: int, batch_size: int, target: int = 512, num_processes: int = 1) -> bool:
    """Exercise checker: True when `grad_accum` micro-batches of `batch_size` on `num_processes` processes
    make an effective batch of `target`, else AssertionError saying what is wrong."""
    if not (isinstance(grad_accum, int) and grad_accum >= 1):
        raise AssertionError(f"grad_accum must be a whole number of at least 1, got {grad_accum!r}.")
    effective = grad_accum * batch_size * num_processes
    if effective != target:
        raise AssertionError(
            f"{grad_accum} x {batch_size} x {num_processes} process(es) = {effective} images per step, not {target}: "
            f"divide {target} by batch_size x processes."
        )
    print(f"Correct: {grad_accum} micro-batches of {batch_size} on {num_processes} process(es) "
          f"= one optimizer step per {target} images.")
    return True


# ---------------------------------------------------------------- keeping the GPU busy
def prepare_batch(images: torch.Tensor, spec: ImageSpec, *, augment: bool = False,
                  crop_scale: tuple[float, float] = (0.5, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                  flip: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images [B, 3, h, w] -> model input [B, 3, *spec.size] in `dtype`, on the images' device.

    With `augment`, each image gets its own random resized crop (area share in `crop_scale`,
    aspect ratio in `crop_ratio`) and, with `flip`, a coin-flip horizontal mirror; the crop is
    resampled straight to the model's size by one `grid_sample`. Without `augment` the image
    is only resized. Then scaled to [0, 1] and normalised like `helpers.data.to_model_input`.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"Expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}.")
    pixels = images.to(dtype) / 255
    if augment:
        theta = random_crop_flip_theta(len(images), crop_scale, crop_ratio, images.device, flip)
        grid = F.affine_grid(theta.to(dtype), [len(images), 3, *spec.size], align_corners=False)
        pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    elif tuple(pixels.shape[-2:]) != tuple(spec.size):
        shrinking = pixels.shape[-1] > spec.size[1] or pixels.shape[-2] > spec.size[0]
        pixels = F.interpolate(pixels, size=spec.size, mode="bilinear", align_corners=False, antialias=shrinking)
    mean = torch.tensor(spec.mean, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def random_crop_flip_theta(batch: int, scale: tuple[float, float], ratio: tuple[float, float],
                           device, flip: bool = True) -> torch.Tensor:
    """One affine matrix [B, 2, 3] per image for `F.affine_grid`: a random crop box, mirrored with probability
    1/2 when `flip`.

    In `affine_grid`'s coordinates ([-1, 1] across the image) a box of relative width w and
    height h centred at (cx, cy) is [[w, 0, cx], [0, h, cy]]; a negative w mirrors it.
    """
    area = torch.empty(batch, device=device).uniform_(*scale)
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(batch, device=device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(batch, device=device) * 2 - 1) * (1 - height)
    mirror = torch.ones(batch, device=device)
    if flip:
        mirror = torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    return theta


def keep_batch(batch):
    """A DataLoader collate_fn for datasets that return whole batches (`__getitems__`): leave them as they are."""
    return batch


def default_device() -> torch.device:
    """This process's GPU (the one `LOCAL_RANK` names under torchrun / accelerate launch), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class DeviceImages(torch.utils.data.Dataset):
    """A whole image set kept as uint8 on the GPU (CIFAR-10's 50,000 images take 150 MB), served a batch at a time.

    A small image leaves the GPU idle when the CPU decodes, crops, flips, resizes it to 224 px
    and copies 16x the pixels as float32 over PCIe for every step. Here the DataLoader only
    picks indices; `__getitems__` gathers the batch on the device and `prepare_batch` does the
    per-sample crop and flip, the resize and the normalisation there, in `dtype` (bf16 on a GPU).
    On a CPU the same code runs in float32. Works in `fit()` like any dataset (num_workers is not used).
    `flip=False` for data whose mirror image means something else (digits, text).
    """

    def __init__(self, images: torch.Tensor, labels, spec: ImageSpec, *, augment: bool = False,
                 crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = True, device=None,
                 dtype: torch.dtype | None = None):
        device = torch.device(device) if device is not None else default_device()
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels: give one label per image.")
        self.images = images.to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        self.spec, self.augment, self.crop_scale, self.flip = spec, augment, crop_scale, flip
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    @classmethod
    def from_dataset(cls, dataset: LabeledImages, spec: ImageSpec, **options) -> "DeviceImages":
        """The raw uint8 images of a `helpers.data` dataset (its own transform is not used), moved to the device."""
        images = getattr(dataset, "images", None)
        if images is None:
            images = torch.stack([dataset.image(i) for i in range(len(dataset))])
        return cls(images, dataset.labels, spec, **options)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        images, labels = self.batch([index])
        return images[0], labels[0]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `indices`, prepared on the device (a fresh random draw per image when augmenting), and labels."""
        index = torch.as_tensor(indices, dtype=torch.long).to(self.images.device, non_blocking=True)
        images = prepare_batch(self.images[index], self.spec, augment=self.augment, crop_scale=self.crop_scale,
                               flip=self.flip, dtype=self.dtype)
        return images, self.labels[index]

    __getitems__ = batch  # what a DataLoader calls to fetch a whole batch at once

    def loader(self, batch_size: int, *, shuffle_generator: torch.Generator | None = None):
        """A DataLoader of whole prepared batches, shuffled by `shuffle_generator` when given."""
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle_generator is not None,
                                           generator=shuffle_generator, collate_fn=keep_batch)


def training_flops_per_image(config) -> float:
    """FLOPs of one training step per image of a ViT config: 3 x the forward pass (backward costs 2x forward),
    a multiply-add counting 2. ViT-B/16 at 224 px: 3 x 2 x 17.58 GMAC = 105.5 GFLOP."""
    from helpers.scratch import attention_flops, grid_size, mlp_flops

    rows, cols = grid_size(config.image_size, config.patch_size)
    patches, hidden = rows * cols, config.hidden_size
    tokens = patches + 1
    patch_embedding = 2 * patches * config.num_channels * config.patch_size ** 2 * hidden
    layers = config.num_hidden_layers * (attention_flops(tokens, hidden)
                                         + mlp_flops(tokens, hidden, config.intermediate_size))
    head = 2 * hidden * config.num_labels
    return 3.0 * (patch_embedding + layers + head)


@dataclass
class Throughput:
    """Training speed of one configuration: images per second, and memory."""

    batch_size: int
    compiled: bool | str
    images_per_second: float
    saved_for_backward_mib: float  # activations autograd keeps for the backward pass (any device)
    peak_gpu_mib: float | None  # all GPU memory at its peak (None on a CPU)


def saved_for_backward_bytes(model: torch.nn.Module, images: torch.Tensor,
                             targets: torch.Tensor | None = None) -> int:
    """Bytes of the tensors autograd saves during one forward pass of `images` (and the loss, when
    `targets` are given), each storage counted once, parameters left out."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = logits_of(model, images)
        if targets is not None:
            cross_entropy(logits, targets)
    return sum(sizes.values())


def measure_training_throughput(model: torch.nn.Module, dataset: DeviceImages, settings: Settings, *,
                                batch_size: int, steps: int = 10, warmup_steps: int = 3,
                                torch_compile: bool | str = False) -> Throughput:
    """Images per second of `fit()`'s training step (`train_step`), after `warmup_steps` untimed steps
    (compilation happens there), and the memory it takes. `torch_compile` as in `fit()`. The model's
    weights are put back afterwards (see `left_as_it_was`)."""
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"Need steps >= 1 and warmup_steps >= 0, got {steps} and {warmup_steps}.")
    settings = dataclasses.replace(settings, batch_size=batch_size, grad_accum=1)
    with left_as_it_was(model):
        accelerator = make_accelerator(settings)
        seed_everything(settings.seed)
        optimizer = make_optimizer("adamw", parameter_groups(model, settings.weight_decay), settings.lr)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        prepared.train()
        loader = dataset.loader(batch_size, shuffle_generator=torch.Generator().manual_seed(settings.seed))
        saved = saved_for_backward_bytes(prepared, next(iter(loader))[0])
        runner = maybe_compile(prepared, torch_compile)
        on_gpu = accelerator.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(accelerator.device)

        def run(count: int) -> None:
            done = 0
            while done < count:
                for images, labels in loader:
                    train_step(runner, images, labels, optimizer, None, accelerator, settings.max_grad_norm)
                    done += 1
                    if done == count:
                        break

        run(warmup_steps)
        synchronize(accelerator.device)
        started = time.perf_counter()
        run(steps)
        synchronize(accelerator.device)
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**20 if on_gpu else None
    return Throughput(batch_size, torch_compile, steps * batch_size / seconds, saved / 2**20, peak)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_table(results: list[Throughput]) -> str:
    """A markdown table of `measure_training_throughput` results, one row per configuration."""
    lines = ["| batch size | compiled | images / s | saved for backward (MiB) | peak GPU memory (MiB) |",
             "|---|---|---|---|---|"]
    for r in results:
        peak = "-" if r.peak_gpu_mib is None else f"{r.peak_gpu_mib:,.0f}"
        lines.append(f"| {r.batch_size} | {r.compiled or 'no'} | {r.images_per_second:,.0f} | "
                     f"{r.saved_for_backward_mib:,.1f} | {peak} |")
    return "\n".join(lines)


def plot_throughput(results: list[Throughput]):
    """Images per second and memory against batch size (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    sizes = [r.batch_size for r in results]
    fig, (ax_speed, ax_memory) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_speed.plot(sizes, [r.images_per_second for r in results], marker="o")
    ax_speed.set(xscale="log", xlabel="batch size", ylabel="images / s", title="throughput")
    ax_memory.plot(sizes, [r.saved_for_backward_mib for r in results], marker="o", label="saved for backward")
    if all(r.peak_gpu_mib is not None for r in results):
        ax_memory.plot(sizes, [r.peak_gpu_mib for r in results], marker="o", label="peak GPU memory")
    ax_memory.set(xscale="log", yscale="log", xlabel="batch size", ylabel="MiB (log scale)", title="memory")
    ax_memory.legend(fontsize=8)
    saved = [r.saved_for_backward_mib for r in results]
    ax_memory.set_yticks(saved, [f"{value:,.0f}" for value in saved])
    for ax in (ax_speed, ax_memory):
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the same fine-tune on transformers.Trainer
def collate_for_trainer(items) -> dict:
    """(image, label) items -> the dict of a batch that `transformers.Trainer` passes around."""
    images, labels = zip(*items)
    return {"pixel_values": torch.stack(images), "labels": torch.as_tensor(labels)}


def make_kit_trainer_class():
    """`transformers.Trainer` with the kit's loss: the model gets only the images (never `labels=`), and
    `cross_entropy` takes class ids or soft targets. A per-batch mean, so Trainer scales it for accumulation."""
    from transformers import Trainer

    class KitTrainer(Trainer):
        loss_is_scaled_for_ga = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = logits_of(model, inputs["pixel_values"])
            loss = cross_entropy(logits, inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    return KitTrainer


def history_callback():
    """A TrainerCallback that collects a `History` (one row per epoch) from Trainer's logs and evaluations."""
    from transformers import TrainerCallback

    class HistoryCallback(TrainerCallback):
        def __init__(self):
            self.history, self.pending, self.started = History(), {}, time.perf_counter()

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.pending = {"train_loss": logs["loss"], "lr": logs.get("learning_rate", float("nan"))}

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.history.rows.append(dict(
                epoch=round(state.epoch), train_loss=self.pending.get("train_loss", float("nan")),
                val_loss=metrics["eval_loss"], val_accuracy=metrics["eval_accuracy"],
                lr=self.pending.get("lr", float("nan")), seconds=time.perf_counter() - self.started,
            ))

    return HistoryCallback()


def accuracy_metric(prediction) -> dict:
    """Trainer's `compute_metrics`: accuracy of the argmax of the logits."""
    return {"accuracy": float((np.asarray(prediction.predictions).argmax(-1) == prediction.label_ids).mean())}


def fit_with_trainer(model: torch.nn.Module, train_set, val_set, settings: Settings, output_dir: str | os.PathLike,
                     *, progress: bool = True, **overrides) -> History:
    """The same fine-tune as `fit()` through `transformers.Trainer`; returns a `History` to compare.

    Same settings, the kit's AdamW groups, warmup + cosine schedule, clipping, accumulation and
    loss; Trainer evaluates every epoch (`eval_strategy="epoch"`) and runs on the CPU when there
    is no GPU (`use_cpu`). Only the shuffling order differs (Trainer draws its own from the seed).
    """
    from transformers import PrinterCallback, TrainingArguments

    settings = dataclasses.replace(settings, **overrides)
    precision = mixed_precision_for(settings)[0]
    arguments = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm or 0.0,
        eval_strategy="epoch", logging_strategy="epoch", save_strategy="no", use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16", fp16=precision == "fp16", seed=settings.seed,
        dataloader_num_workers=settings.num_workers, remove_unused_columns=False, label_names=["labels"],
        report_to="none", disable_tqdm=not progress,
    )
    optimizer = make_optimizer("adamw", parameter_groups(model, settings.weight_decay), settings.lr)
    steps = run_steps(len(train_set), settings, arguments.world_size)
    scheduler = make_scheduler(optimizer, "warmup_cosine", steps.warmup, steps.total)
    callback = history_callback()
    trainer = make_kit_trainer_class()(
        model=model, args=arguments, train_dataset=train_set, eval_dataset=val_set,
        data_collator=collate_for_trainer, compute_metrics=accuracy_metric, optimizers=(optimizer, scheduler),
        callbacks=[callback],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.eval()
    return callback.history


def compare_histories(histories: dict[str, History], metric: str = "val_accuracy"):
    """One line per run of `metric` against epoch (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name, history in histories.items():
        ax.plot(history.column("epoch"), history.column(metric), marker="o", label=name)
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=metric.replace("_", " "))
    ax.legend()
    fig.tight_layout()
    return fig


def side_by_side(histories: dict[str, History], metric: str = "val_accuracy") -> str:
    """A markdown table of `metric` per epoch, one column per run."""
    epochs = sorted({row["epoch"] for history in histories.values() for row in history.rows})
    lines = ["| epoch | " + " | ".join(histories) + " |", "|---|" + "---|" * len(histories)]
    for epoch in epochs:
        cells = [next((f"{r[metric]:.4f}" for r in h.rows if r["epoch"] == epoch), "-") for h in histories.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- scaling out
DISTRIBUTED_DEMO = "helpers.distributed_demo"


def torchrun_command(module: str, arguments: list[str], nproc_per_node: int = 2) -> list[str]:
    """The command that starts `python -m module arguments` in `nproc_per_node` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc_per_node),
            "-m", module, *arguments]


def run_distributed_demo(out_dir: str | os.PathLike, nproc_per_node: int = 2, train_size: int = 128,
                         timeout: float = 600) -> list[dict]:
    """Run `helpers.distributed_demo` (fit() on the tiny ViT) under torchrun; return each rank's report.

    Each report holds rank, world_size, the weights' checksum before and after training, and
    val_accuracy. Every rank must end with the same weights for data-parallel training to be right.
    With fewer GPUs than processes the processes run on the CPU (gloo), as two cannot share one GPU.
    """
    out_dir = Path(out_dir)
    command = torchrun_command(DISTRIBUTED_DEMO, ["--out", str(out_dir), "--train-size", str(train_size)],
                               nproc_per_node)
    print("$ " + shlex.join(["python", *command[1:]]), flush=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if torch.cuda.device_count() < nproc_per_node:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(f"torchrun failed with exit code {finished.returncode}:\n{finished.stderr[-2000:]}")
    return [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(nproc_per_node)]
