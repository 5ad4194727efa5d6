"""The optimizer and its schedule (lesson 05): AdamW parameter groups, SGD, warmup + cosine, step counts."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from helpers.profiles import Settings

NO_DECAY_NAME_PARTS = ("bias", "norm", "position_embeddings", "cls_token", "pos_embed")


OPTIMIZERS = ("adamw", "sgd")


SCHEDULES = ("warmup_cosine", "linear", "constant")


SGD_MOMENTUM = 0.9


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters AdamW should not decay: biases, norms, position embeddings, CLS token (lesson 05)."""
    return param.ndim <= 1 or any(part in name.lower() for part in NO_DECAY_NAME_PARTS)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups of the trainable parameters: decayed, and not decayed (lesson 05)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(name: str, groups, lr: float) -> torch.optim.Optimizer:
    """'adamw' (fused on a GPU) or 'sgd' (momentum 0.9, the ViT paper's fine-tuning optimizer) over `groups` (lesson 05)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True if torch.cuda.is_available() else None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"Unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}.")


def lr_factor(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """The multiple of the peak lr at optimizer step `step`: linear warmup from 0, then `schedule`'s shape (lesson 05).

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
    """A LambdaLR that follows `lr_factor(schedule, ...)` on every parameter group (lesson 05)."""
    lr_factor(schedule, 0, 0, 1)  # an unknown name fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, warmup_steps, total_steps)
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to each group's lr, then cosine decay to 0 at `total_steps` (lesson 05)."""
    return make_scheduler(optimizer, "warmup_cosine", warmup_steps, total_steps)


@dataclass(frozen=True)
class RunSteps:
    """How many optimizer steps a run makes: per epoch, in all, and of warmup (lesson 05)."""

    per_epoch: int
    total: int
    warmup: int


def run_steps(num_images: int, settings: Settings, num_processes: int = 1) -> RunSteps:
    """The optimizer steps `fit()` makes on `num_images` training images with these settings (lesson 05).

    Each process sees ceil(batches / processes) batches; every `grad_accum` of them (and the
    last of an epoch) end in one optimizer step.
    """
    batches = math.ceil(math.ceil(num_images / settings.batch_size) / num_processes)
    per_epoch = math.ceil(batches / settings.grad_accum)
    total = per_epoch * settings.epochs
    return RunSteps(per_epoch, total, round(settings.warmup_ratio * total))


def schedule_curve(schedule: str, lr: float, steps: RunSteps) -> list[float]:
    """The lr at every optimizer step of a run, as `make_scheduler` sets it (lesson 05)."""
    return [lr * lr_factor(schedule, step, steps.warmup, steps.total) for step in range(steps.total)]
