"""What `fit()` checks before its first step, and at every step, so that nothing trains silently wrong (lesson 05):
the call's arguments, an accumulation window that fits in an epoch, float model input, a head with one output per
class, and a finite loss.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import default_collate

from helpers.models import eval_mode
from helpers.train.checkpoint import kept_random_state
from helpers.train.optim import run_steps


class NonFiniteLoss(FloatingPointError):
    """The training loss is NaN or infinite: the step is not taken (lesson 05)."""


def check_arguments(train_set, val_set, checkpoint_dir, resume: bool, overwrite: bool, patience) -> None:
    """Refuse a `fit()` call that cannot work, before anything is prepared (lesson 05)."""
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("The training and validation sets must each hold at least one image.")
    if (resume or overwrite) and checkpoint_dir is None:
        raise ValueError(f"{'resume' if resume else 'overwrite'}=True needs a checkpoint_dir to work on.")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in checkpoint_dir and overwrite=True deletes it: pass one.")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be at least 1 epoch (or None for no early stopping), got {patience}.")


def check_accumulation_window(num_images: int, settings, num_processes: int) -> None:
    """Refuse a `grad_accum` longer than an epoch, where every step would quietly average fewer batches (lesson 05)."""
    batches_per_epoch = run_steps(num_images, dataclasses.replace(settings, grad_accum=1), num_processes).per_epoch
    if settings.grad_accum > batches_per_epoch:
        raise ValueError(
            f"grad_accum={settings.grad_accum} is longer than an epoch, which has only {batches_per_epoch} "
            f"batch(es) of {settings.batch_size} per process: use grad_accum={batches_per_epoch} or less, "
            "or a smaller batch_size."
        )


PROBE_IMAGES = 2  # the training images check_model_input reads before the first step


def check_model_input(model: torch.nn.Module, train_set, batch_transform, accelerator, logits_of) -> None:
    """Run `PROBE_IMAGES` training images through `batch_transform` and `model` (eval mode, no gradient, random
    state kept): refuse integer pixels and a head whose width differs from the number of classes (lesson 05)."""
    with kept_random_state(), torch.no_grad(), eval_mode(model), accelerator.autocast():
        images, labels = default_collate([train_set[i] for i in range(min(PROBE_IMAGES, len(train_set)))])
        if batch_transform is not None:
            images, _ = batch_transform(images, labels)
        if not images.is_floating_point():
            raise ValueError(
                f"The training images reach the model as {images.dtype} pixels: give the datasets a transform "
                "that makes float model input, e.g. splits.with_transforms(data.eval_transform(spec))."
            )
        width = logits_of(model, images.to(accelerator.device)).shape[-1]
    classes, labels = getattr(train_set, "classes", None), getattr(train_set, "labels", None)
    if classes is not None:
        needed, misfit = len(classes), width != len(classes)
    elif labels is not None:  # no class names: the largest label sets a lower bound
        needed = int(torch.as_tensor(labels).max()) + 1
        misfit = width < needed
    else:
        return
    if misfit:
        raise ValueError(
            f"The model's head has {width} outputs but the data has {needed} classes: load the model with the "
            "data's class names (models.load_model(name, splits.classes)) so its head fits."
        )


def require_finite(loss: torch.Tensor, accelerator) -> None:
    """Raise `NonFiniteLoss` when `loss` is NaN or infinite here or in any other process, so that all of them
    stop together and none waits for the others (lesson 05)."""
    finite_here = finite_everywhere = bool(torch.isfinite(loss).all())
    if accelerator.num_processes > 1:
        not_finite = torch.tensor(float(not finite_here), device=loss.device)
        finite_everywhere = not accelerator.reduce(not_finite, "sum")
    if not finite_everywhere:
        value = loss.item() if not finite_here else "not finite in another process"
        raise NonFiniteLoss(f"The training loss is {value}.")


def diverged(error: NonFiniteLoss, epoch: int, settings, checkpoint_dir: Path | None,
             last_checkpoint: Path | None) -> FloatingPointError:
    """The one sentence `fit()` stops with when the loss is not finite: where, what is kept, what to try (lesson 05)."""
    if checkpoint_dir is None:
        kept, reuse = "nothing was saved (no checkpoint_dir)", ""
    else:
        kept = (f"the last good checkpoint, {last_checkpoint}, is kept" if last_checkpoint is not None
                else "no checkpoint of this run was written")
        reuse = ", with overwrite=True to reuse the folder"
    return FloatingPointError(
        f"{str(error).rstrip('.')} in epoch {epoch}, so training stopped before that step and {kept}: train again "
        f"with a lower lr (now {settings.lr:g}) or with gradient clipping (max_grad_norm, now "
        f"{settings.max_grad_norm}){reuse}."
    )
