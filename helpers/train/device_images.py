"""`DeviceImages`: a whole image set kept as uint8 on the GPU and prepared there, a batch at a time (lesson 05)."""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from helpers.data.images import LabeledImages
from helpers.data.transforms import ImageSpec


def prepare_batch(images: torch.Tensor, spec: ImageSpec, *, augment: bool = False,
                  crop_scale: tuple[float, float] = (0.5, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                  flip: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images [B, 3, h, w] -> model input [B, 3, *spec.size] in `dtype`, on the images' device (lesson 05).

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
    mean, std = (per_channel(tuple(values), images.device, dtype) for values in (spec.mean, spec.std))
    return (pixels - mean) / std


@functools.lru_cache(maxsize=32)
def per_channel(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`values` as a [1, C, 1, 1] tensor on `device`, made once: copied from the host for every batch, they
    would make the CPU wait for the GPU to finish its queued work before it could queue the next step (lesson 05)."""
    with torch.inference_mode(False):  # a plain tensor, usable in training as well as under inference_mode
        return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def random_crop_flip_theta(batch: int, scale: tuple[float, float], ratio: tuple[float, float],
                           device, flip: bool = True) -> torch.Tensor:
    """One affine matrix [B, 2, 3] per image for `F.affine_grid`: a random crop box, mirrored with probability
    1/2 when `flip` (lesson 05).

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
    """A DataLoader collate_fn for datasets that return whole batches (`__getitems__`): leave them as they are (lesson 05)."""
    return batch


def default_device() -> torch.device:
    """This process's GPU (the one `LOCAL_RANK` names under torchrun / accelerate launch), else the CPU (lesson 05)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class DeviceImages(torch.utils.data.Dataset):
    """A whole image set kept as uint8 on the GPU (CIFAR-10's 50,000 images take 150 MB), served a batch at a time (lesson 05).

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
        index = torch.as_tensor(indices, dtype=torch.long)
        if index.device.type == "cpu" and self.images.is_cuda:
            index = index.pin_memory()  # from pinned memory the copy is asynchronous: the CPU need not wait
        index = index.to(self.images.device, non_blocking=True)
        images = prepare_batch(self.images[index], self.spec, augment=self.augment, crop_scale=self.crop_scale,
                               flip=self.flip, dtype=self.dtype)
        return images, self.labels[index]

    __getitems__ = batch  # what a DataLoader calls to fetch a whole batch at once

    def loader(self, batch_size: int, *, shuffle_generator: torch.Generator | None = None):
        """A DataLoader of whole prepared batches, shuffled by `shuffle_generator` when given."""
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle_generator is not None,
                                           generator=shuffle_generator, collate_fn=keep_batch)
