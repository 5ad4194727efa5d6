"""Image classifiers from a hub id, a local folder, or the kit's bundled tiny ViT; ViT arithmetic.

`load_model(name, labels)` returns `(model, image_processor)` with the labels wired into
the config (`id2label`, `label2id`) and a new classification head when the number of
labels differs from the checkpoint's. Offline and not cached: one clear sentence.
`grid_size`, `sequence_length`, `attention_flops`, `mlp_flops` and `training_flops_per_image`
count a ViT's tokens and FLOPs (lesson 01 derives them, lesson 05 and the GPU bench use them).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTConfig,
)
from transformers.utils import logging as transformers_logging

from helpers.caches import STAND_IN_MARKER, model_status
from helpers.profiles import is_online

ASSETS = Path(__file__).parent / "assets"


BUNDLED_MODELS = {"tiny-vit": ASSETS / "tiny-vit"}


class ModelUnavailable(OSError):
    """A model that cannot be had here (offline and not cached, or no such model) (lesson 00)."""


def tiny_vit_config(num_labels: int = 10) -> ViTConfig:
    """The kit's tiny ViT: 32 px images, 4 px patches (64 tokens + CLS), width 64, 4 layers, 4 heads (lesson 00)."""
    return ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=256, num_labels=num_labels,
    )


@dataclass
class LoadReport:
    """Which weights came from the checkpoint and which are new (randomly initialised) (lesson 00)."""

    source: str
    new: list[str]
    resized: list[str]
    unused: list[str]
    stand_in: bool = False  # random weights written by `prefetch --stand-in`: accuracy with it means nothing

    def __str__(self) -> str:
        lines = [f"loaded from {self.source}" + (" (a STAND-IN: random weights with the real shapes)"
                                                 if self.stand_in else "")]
        lines.append(f"  new, randomly initialised: {', '.join(self.new) or 'none'}")
        if self.resized:
            lines.append(f"  re-initialised (shape changed): {', '.join(self.resized)}")
        if self.unused:
            lines.append(f"  in the checkpoint but unused: {', '.join(self.unused)}")
        return "\n".join(lines)


@contextmanager
def quiet_transformers():
    """Silence transformers' own load report and progress bar for the block: `LoadReport` says what matters (lesson 00)."""
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def resolve_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is on this disk) for a short name, folder or hub id (lesson 00)."""
    if name in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[name]
        if not (folder / "config.json").exists():
            raise ModelUnavailable(f"The bundled model {name!r} is missing from {folder}: reinstall the kit.")
        return str(folder), True
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name), True
    return name, False


def load_model_with_report(name: str, labels, *, random_init: bool = False, attn_implementation: str | None = None):
    """Like `load_model`, plus a `LoadReport` of what is loaded and what is new (lesson 00)."""
    source, local = resolve_source(name)
    labels = [str(label) for label in labels]
    label_kwargs = dict(
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    hub_kwargs = {} if local else {"local_files_only": not is_online()}
    attn_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
            if random_init:
                config = AutoConfig.from_pretrained(source, **label_kwargs, **hub_kwargs)
                model = AutoModelForImageClassification.from_config(config, **attn_kwargs)
                report = LoadReport(f"{name} (config only, random init)", ["all weights"], [], [])
            else:
                model, info = AutoModelForImageClassification.from_pretrained(
                    source, **label_kwargs, **hub_kwargs, **attn_kwargs, **offline_adapter_kwargs(hub_kwargs),
                    ignore_mismatched_sizes=True, output_loading_info=True,
                )
                report = LoadReport(
                    name,
                    new=sorted(info.get("missing_keys", [])),
                    resized=sorted(str(key[0]) if isinstance(key, tuple) else str(key)
                                   for key in info.get("mismatched_keys", [])),
                    unused=sorted(info.get("unexpected_keys", [])),
                )
    except OSError as error:
        if local:
            raise ModelUnavailable(f"{source} is not a model folder ({error}): point to a folder made by "
                                   "save_pretrained.") from None
        if not hub_kwargs["local_files_only"]:
            raise ModelUnavailable(f"The hub has no model {name!r}: check the id on huggingface.co.") from None
        raise ModelUnavailable(
            f"Model {name!r} is not in the local cache and the hub cannot be reached: connect once to download it, "
            "point HF_HOME at a prefetched cache, or use model 'tiny-vit'."
        ) from None
    report.stand_in = (Path(source) / STAND_IN_MARKER).is_file() if local else model_status(name) == "stand-in"
    return model, processor, report


def offline_adapter_kwargs(hub_kwargs: dict) -> dict:
    """Offline, keep transformers' look for a PEFT adapter off the network too (it ignores `local_files_only`
    and retries for about 25 s before giving up) (lesson 00)."""
    return {"adapter_kwargs": dict(hub_kwargs)} if hub_kwargs.get("local_files_only") else {}


def load_model(name: str, labels, *, random_init: bool = False, attn_implementation: str | None = None):
    """`(model, image_processor)` for `name`: a hub id, a local folder, or 'tiny-vit' (bundled, offline) (lesson 00).

    `labels` are the class names of the task; the head is new when their number differs
    from the checkpoint's. `random_init=True` keeps the architecture and drops the weights
    (the honest control for "does pretraining help?"). `attn_implementation="eager"` is
    needed for `output_attentions=True` (the default sdpa returns no attention weights).
    """
    model, processor, _ = load_model_with_report(
        name, labels, random_init=random_init, attn_implementation=attn_implementation
    )
    return model, processor


def training_flops_per_image(config) -> float:
    """FLOPs of one training step per image of a ViT config: 3 x the forward pass (backward costs 2x forward),
    a multiply-add counting 2. ViT-B/16 at 224 px: 3 x 2 x 17.58 GMAC = 105.5 GFLOP (lesson 05)."""
    from helpers.models import attention_flops, grid_size, mlp_flops

    rows, cols = grid_size(config.image_size, config.patch_size)
    patches, hidden = rows * cols, config.hidden_size
    tokens = patches + 1
    patch_embedding = 2 * patches * config.num_channels * config.patch_size ** 2 * hidden
    layers = config.num_hidden_layers * (attention_flops(tokens, hidden)
                                         + mlp_flops(tokens, hidden, config.intermediate_size))
    head = 2 * hidden * config.num_labels
    return 3.0 * (patch_embedding + layers + head)


def device_of(model: torch.nn.Module) -> torch.device:


    """The device of the model's first parameter (the CPU for a model without parameters) (lesson 06)."""
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Put every module in eval mode for the block, then restore each one's own train/eval mode (lesson 06)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """Return `size` as (height, width); a single int means a square (lesson 01)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def grid_size(image_size: int | Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, int]:
    """Number of patches along (height, width) when an image is cut into non-overlapping patches (lesson 01)."""
    (height, width), (patch_h, patch_w) = as_pair(image_size), as_pair(patch_size)
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"Image size {(height, width)} is not divisible by patch size {(patch_h, patch_w)}; "
            "resize the image or pick a patch size that divides it."
        )
    return height // patch_h, width // patch_w


def sequence_length(image_size: int | Sequence[int], patch_size: int | Sequence[int], cls_token: bool = True) -> int:
    """Number of tokens the encoder sees: one per patch, plus the CLS token (lesson 01)."""
    rows, cols = grid_size(image_size, patch_size)
    return rows * cols + int(cls_token)


def attention_flops(num_tokens: int, hidden_size: int) -> int:
    """FLOPs of one self-attention layer on one image (a multiply-add counts as 2) (lesson 01).

    Q, K, V and output projections cost 8*N*D^2; scores Q K^T and the weighted sum of V cost 4*N^2*D.
    The N^2 term is why doubling the resolution (4x the tokens) makes attention up to 16x as expensive.
    """
    return 8 * num_tokens * hidden_size**2 + 4 * num_tokens**2 * hidden_size


def mlp_flops(num_tokens: int, hidden_size: int, intermediate_size: int) -> int:
    """FLOPs of one encoder MLP on one image: two linear layers, linear in the number of tokens (lesson 01)."""
    return 4 * num_tokens * hidden_size * intermediate_size
