"""`finetuned(settings)`: a fine-tune trained once with `fit()` and cached on disk, keyed by its settings.

Lessons 01, 04 and 06 start from a fine-tuned model without paying for the training twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from helpers import models
from helpers.caches import file_sha256, stand_ins_in_use
from helpers.data.datasets import load_dataset
from helpers.data.splits import Splits
from helpers.data.transforms import ImageSpec, eval_transform
from helpers.profiles import Settings, device_name
from helpers.train.history import History
from helpers.train.inputs import fit_inputs
from helpers.train.loop import fit

FINETUNED_CACHE = Path.home() / ".cache" / "vit-course" / "finetuned"


_SETTINGS_NOT_IN_KEY = ("profile", "reason", "num_workers")  # they do not change the trained weights


@dataclass
class FineTuned:
    """A fine-tuned classifier with its data and training history, as ``finetuned`` returns it (lessons 01 and 06)."""

    model: torch.nn.Module  # in eval mode, on the best device here
    processor: object  # its image processor
    splits: Splits  # train / val / test, each with the model's eval transform
    spec: ImageSpec
    history: History
    folder: Path  # the cached fine-tune, in save_pretrained format
    reused: bool  # True when loaded from the cache, False when trained just now


def finetune_key(settings: Settings) -> str:
    """A short hash of what decides the fine-tuned weights: the settings, and the files of a local starting model (lessons 01 and 06)."""
    values = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in _SETTINGS_NOT_IN_KEY}
    source, local = models.resolve_source(settings.model_name)
    if local:
        files = sorted(path for path in Path(source).rglob("*") if path.is_file())
        values["model_files"] = {str(path.relative_to(source)): file_sha256(path) for path in files}
    stand_ins = stand_ins_in_use(settings.model_name, settings.dataset_name)
    if stand_ins:  # a fine-tune of stand-ins is not reused once the real model or data is here
        values["stand_ins"] = stand_ins
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def finetuned(
    settings: Settings,
    *,
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    progress: bool = True,
) -> FineTuned:
    """Fine-tune ``settings.model_name`` on ``settings.dataset_name``, or reuse the fine-tune cached for these settings (lessons 01 and 06).

    Training is ``helpers.train.fit`` on the training split with the model's eval transform. The
    result is saved with ``save_pretrained`` (plus ``history.json`` and ``settings.json``) in
    ``cache_dir`` (default ~/.cache/vit-course/finetuned) under ``finetune_key(settings)``. The
    model returned is always loaded from that folder, so a fresh and a reused fine-tune are the
    same; ``attn_implementation="eager"`` makes it return attention weights.
    """
    splits = load_dataset(
        settings.dataset_name, seed=settings.seed, train_size=settings.train_size, eval_size=settings.eval_size
    )
    folder = Path(cache_dir if cache_dir is not None else FINETUNED_CACHE).expanduser() / finetune_key(settings)
    reused = (folder / "history.json").is_file()
    if not reused:
        _train_into(folder, settings, splits, progress)
    model, processor = models.load_model(str(folder), splits.classes, attn_implementation=attn_implementation)
    model.to(device_name()).eval()
    spec = ImageSpec.from_processor(processor)
    history = History(rows=json.loads((folder / "history.json").read_text()))
    return FineTuned(model, processor, splits.with_transforms(eval_transform(spec)), spec, history, folder, reused)


def _train_into(folder: Path, settings: Settings, splits: Splits, progress: bool) -> None:
    """Fine-tune and save into ``folder``, written under a temporary name first so a finished folder is complete."""
    model, processor = models.load_model(settings.model_name, splits.classes)
    inputs = fit_inputs(splits, ImageSpec.from_processor(processor), settings)  # on the GPU where they fit
    history = fit(model, inputs.train, inputs.val, settings, progress=progress)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "settings.json").write_text(json.dumps(asdict(settings), indent=1))
    (staging / "history.json").write_text(json.dumps(history.rows, indent=1))
    try:
        staging.rename(folder)
    except OSError:  # another run cached the same settings meanwhile
        shutil.rmtree(staging)
