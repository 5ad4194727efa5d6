"""Image classifiers from a hub id, a local folder, or the kit's bundled tiny ViT.

`load_model(name, labels)` returns `(model, image_processor)` with the labels wired into
the config (`id2label`, `label2id`) and a new classification head when the number of
labels differs from the checkpoint's. Offline and not cached: one clear sentence.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, ViTConfig
from transformers.utils import logging as transformers_logging

from helpers.profiles import is_online

ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODELS = {"tiny-vit": ASSETS / "tiny-vit"}


class ModelUnavailable(OSError):
    """A model that cannot be had here (offline and not cached, or no such model)."""


def tiny_vit_config(num_labels: int = 10) -> ViTConfig:
    """The kit's tiny ViT: 32 px images, 4 px patches (64 tokens + CLS), width 64, 4 layers, 4 heads."""
    return ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=256, num_labels=num_labels,
    )


@dataclass
class LoadReport:
    """Which weights came from the checkpoint and which are new (randomly initialised)."""

    source: str
    new: list[str]
    resized: list[str]
    unused: list[str]

    def __str__(self) -> str:
        lines = [f"loaded from {self.source}"]
        lines.append(f"  new, randomly initialised: {', '.join(self.new) or 'none'}")
        if self.resized:
            lines.append(f"  re-initialised (shape changed): {', '.join(self.resized)}")
        if self.unused:
            lines.append(f"  in the checkpoint but unused: {', '.join(self.unused)}")
        return "\n".join(lines)


@contextmanager
def quiet_transformers():
    """Silence transformers' own load report and progress bar for the block: `LoadReport` says what matters."""
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
    """(what to pass to from_pretrained, whether it is on this disk) for a short name, folder or hub id."""
    if name in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[name]
        if not (folder / "config.json").exists():
            raise ModelUnavailable(f"The bundled model {name!r} is missing from {folder}: reinstall the kit.")
        return str(folder), True
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name), True
    return name, False


def load_model_with_report(name: str, labels, *, random_init: bool = False, attn_implementation: str | None = None):
    """Like `load_model`, plus a `LoadReport` of what is loaded and what is new."""
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
                    source, **label_kwargs, **hub_kwargs, **attn_kwargs,
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
    return model, processor, report


def load_model(name: str, labels, *, random_init: bool = False, attn_implementation: str | None = None):
    """`(model, image_processor)` for `name`: a hub id, a local folder, or 'tiny-vit' (bundled, offline).

    `labels` are the class names of the task; the head is new when their number differs
    from the checkpoint's. `random_init=True` keeps the architecture and drops the weights
    (the honest control for "does pretraining help?"). `attn_implementation="eager"` is
    needed for `output_attentions=True` (the default sdpa returns no attention weights).
    """
    model, processor, _ = load_model_with_report(
        name, labels, random_init=random_init, attn_implementation=attn_implementation
    )
    return model, processor
