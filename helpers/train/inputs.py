"""The input path of a fine-tune (lesson 05): the training and validation sets `fit()` is given, fed from the GPU
itself where the images fit on it (`DeviceImages`), else by worker processes into pinned memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from helpers import hardware
from helpers.data.splits import Splits
from helpers.data.transforms import ImageSpec, eval_transform, to_model_input
from helpers.profiles import Settings
from helpers.train.device_images import DeviceImages

DEVICE_SHARE = 0.1  # the images may take this share of the card's memory budget to live on it
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass
class FitInputs:
    """The training and validation sets for `fit()`, whether they live on the GPU, and why (lesson 05)."""

    train: object
    val: object
    on_device: bool
    reason: str

    def __str__(self) -> str:
        return f"input path: {self.reason}"


def fit_inputs(splits: Splits, spec: ImageSpec, settings: Settings, *, augment: bool = False, flip: bool = True,
               crop_scale: tuple[float, float] = (0.5, 1.0), device: hardware.Device | None = None) -> FitInputs:
    """`splits.train` and `splits.val` ready for `fit()` (lesson 05).

    On a CUDA GPU, when the raw uint8 images take at most `DEVICE_SHARE` of the memory budget, they move to
    the card as `DeviceImages`: resized (and with `augment`, randomly cropped and flipped) there, in the
    precision `fit()` will use, so the GPU never waits for the CPU. Otherwise each image is decoded and
    transformed on the CPU, and `fit()` feeds the batches through `settings.num_workers` worker processes
    into pinned memory. The test split is left alone: evaluation takes an ordinary dataset.
    """
    device = device or hardware.read_device()
    image_bytes = sum(len(dataset) * dataset.image(0).numel() for dataset in (splits.train, splits.val))
    budget = hardware.memory_budget(device)
    if device.kind == "cuda" and (budget is None or image_bytes <= DEVICE_SHARE * budget):
        dtype = DTYPES[hardware.precision_for(device, settings.precision)[0]]
        train = DeviceImages.from_dataset(splits.train, spec, augment=augment, flip=flip, crop_scale=crop_scale,
                                          dtype=dtype)
        val = DeviceImages.from_dataset(splits.val, spec, dtype=dtype)
        return FitInputs(train, val, True, f"{image_bytes / 2**20:,.0f} MiB of uint8 images on {device.name}, "
                                           f"prepared there in {dtype}")
    transform = eval_transform(spec)
    if augment:
        transform = v2.Compose([v2.RandomResizedCrop(spec.size, scale=crop_scale, antialias=True),
                                *([v2.RandomHorizontalFlip()] if flip else []), to_model_input(spec)])
    where = ("no CUDA GPU" if device.kind != "cuda"
             else f"{image_bytes / 2**30:.1f} GiB of images is too much to keep on {device.name}")
    return FitInputs(splits.train.with_transform(transform), splits.val.with_transform(eval_transform(spec)), False,
                     f"{where}: images prepared on the CPU by {settings.num_workers} worker process(es)")
