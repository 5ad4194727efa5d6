"""What a resumed `fit()` must share with the run that wrote the checkpoint (lesson 05).

The fingerprint holds the model (class, parameter names, shapes and trainability), the class names, the
optimizer's parameter groups, the optimizer and schedule, the settings that shape each step (batch size,
accumulation, lr, weight decay, warmup, clipping, seed), the number of processes, and the identity of the
training and validation data. Free to change on resume: `epochs` (the schedule stretches or shrinks to the
new total), `num_workers` and `precision` (a resume may run on other hardware).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

STEP_SETTINGS = ("batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "seed")


SAMPLED_IMAGES = 8


def run_fingerprint(model: torch.nn.Module, train_set, val_set, optimizer: torch.optim.Optimizer, settings,
                    optimizer_name: str, schedule: str, num_processes: int) -> dict:
    """The fingerprint of a run about to start, as plain JSON values (lesson 05)."""
    fingerprint = {
        "model": type(model).__name__,
        "parameters": [[name, list(p.shape), p.requires_grad] for name, p in model.named_parameters()],
        "classes": list(getattr(train_set, "classes", None) or []),
        "parameter_groups": [[len(group["params"]), sum(p.numel() for p in group["params"]),
                              group.get("initial_lr", group["lr"]), group.get("weight_decay", 0.0)]
                             for group in optimizer.param_groups],
        "optimizer": optimizer_name,
        "schedule": schedule,
        **{name: getattr(settings, name) for name in STEP_SETTINGS},
        "processes": num_processes,
        "train_images": len(train_set),
        "train_data": data_identity(train_set),
        "val_data": data_identity(val_set),
        "epochs": settings.epochs,
    }
    return json.loads(json.dumps(fingerprint, default=lambda value: value.item()))


def data_identity(dataset) -> str:
    """sha256 of a dataset's size, labels and a few evenly spaced raw images (before any transform) (lesson 05).

    A dataset with neither `labels` nor raw images (`image(i)` or an `images` tensor) is known by its size only.
    """
    digest = hashlib.sha256(str(len(dataset)).encode())
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        digest.update(json.dumps(torch.as_tensor(labels).tolist()).encode())
    for index in sorted({int(i) for i in np.linspace(0, len(dataset) - 1, SAMPLED_IMAGES)}) if len(dataset) else []:
        image = raw_image(dataset, index)
        if image is not None:
            digest.update(image.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def raw_image(dataset, index: int) -> torch.Tensor | None:
    """Image `index` of `dataset` before its transform: `LabeledImages.image` or a `DeviceImages` row (lesson 05)."""
    if callable(getattr(dataset, "image", None)):
        return dataset.image(index)
    images = getattr(dataset, "images", None)
    return images[index] if isinstance(images, torch.Tensor) else None


def resume_problems(saved: dict, current: dict, epochs_done: int) -> list[str]:
    """What keeps a run with fingerprint `current` from resuming one saved as `saved` after `epochs_done`
    epochs, one phrase each (none: it may resume) (lesson 05)."""
    if not saved:
        return ["its manifest holds no fingerprint of the run"]
    differing = [name for name, value in current.items() if name != "epochs" and saved.get(name) != value]
    for cause, consequence in (("lr", "parameter_groups"), ("weight_decay", "parameter_groups"),
                               ("train_images", "train_data")):
        if cause in differing and consequence in differing:
            differing.remove(consequence)  # said already: the groups follow lr and weight decay, the data its size
    problems = [describe(name, saved.get(name), current[name]) for name in differing]
    if current["epochs"] < epochs_done:
        problems.append(f"it has already trained {epochs_done} epochs, more than epochs={current['epochs']}")
    return problems


def describe(name: str, old, new) -> str:
    """One phrase for a difference between the saved run and this call (lesson 05)."""
    if name == "parameters":
        pairs = [(a, b) for a, b in zip(old or [], new) if a != b]
        old, new = pairs[0] if pairs else (f"{len(old or [])} tensors", f"{len(new)} tensors")
        return f"the model's parameters differ ({old} then, {new} now)"
    if name == "parameter_groups":
        return f"the optimizer's parameter groups (tensors, elements, lr, weight decay) were {old} and are now {new}"
    if name in ("train_data", "val_data"):
        which = "training" if name == "train_data" else "validation"
        return f"the {which} data differs (other labels or images)"
    if name == "classes" and old and len(old) + len(new) > 12:
        return f"the classes differ ({len(old)} then, {len(new)} now)"
    return f"{name} was {old!r} and is now {new!r}"
