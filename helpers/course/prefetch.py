"""`python -m helpers.course prefetch`: the gpu profile's model and CIFAR-10 into the caches `auto` looks at.

Online, the real ones are downloaded (an interrupted download resumes), checked, and their size reported.
`--stand-in` writes same-shaped stand-ins for machines that can never reach the hub: a randomly initialised
ViT-B/16 with the checkpoint's config and processor, in the Hugging Face cache layout so `from_pretrained`
finds it offline, and a CIFAR-10-format archive of generated images. Each is marked as a stand-in; a real
model or dataset already cached is left alone, and a later real download replaces a stand-in.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from helpers import caches, profiles
from helpers.caches import STAND_IN_MARKER
from helpers.models import quiet_transformers

# google/vit-base-patch16-224-in21k's config.json and preprocessor_config.json, as published on the hub.
GPU_MODEL_CONFIG = {
    "_name_or_path": "google/vit-base-patch16-224-in21k",
    "architectures": ["ViTModel"],
    "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 768,
    "image_size": 224,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "model_type": "vit",
    "num_attention_heads": 12,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "patch_size": 16,
    "qkv_bias": True,
    "transformers_version": "4.13.0.dev0",
}
GPU_MODEL_PROCESSOR = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}
STAND_IN_REVISION = "57a4d15e" * 5  # the snapshot name of a stand-in model: no real commit has it
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
OFFLINE = ("prefetch downloads from the Hugging Face hub and the CIFAR site, and this machine cannot reach them "
           "(offline, or HF_HUB_OFFLINE=1): run it once online, or write same-shaped stand-ins with "
           "`python -m helpers.course prefetch --stand-in`.")


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def write_model_stand_in(model_id: str = profiles.GPU_MODEL, config: dict | None = None,
                         processor: dict | None = None, cache_dir: Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised model with `config` (default: the gpu model's) and `processor`, written into the
    Hugging Face cache as the snapshot 'main' of `model_id` and marked as a stand-in; returns the snapshot.
    A real model already cached is kept (and returned)."""
    import torch
    from transformers import ViTConfig, ViTModel

    if caches.model_status(model_id, cache_dir) == "real":
        return caches.hub_snapshot(model_id, cache_dir)
    config, processor = config or GPU_MODEL_CONFIG, processor or GPU_MODEL_PROCESSOR
    repo = caches.hub_repo_folder(model_id, cache_dir)
    snapshot = repo / "snapshots" / STAND_IN_REVISION
    staging = snapshot.with_name(f".{STAND_IN_REVISION}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    torch.manual_seed(seed)
    fields = {key: value for key, value in config.items() if not key.startswith("_") and key != "architectures"}
    with quiet_transformers():
        ViTModel(ViTConfig(**fields)).save_pretrained(staging)
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (staging / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    caches.write_marker(staging, f"{model_id} with random weights", sorted(p.name for p in staging.iterdir()))
    shutil.rmtree(snapshot, ignore_errors=True)
    staging.rename(snapshot)
    write_text_atomically(repo / "refs" / "main", STAND_IN_REVISION)
    return snapshot


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def stand_in_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images [N, 3, 32, 32] a classifier can learn: each class has its own colour and a square at its
    own place, under noise and random brightness."""
    count = len(labels)
    hues = np.linspace(0, 1, num_classes, endpoint=False)[labels]
    colours = np.stack([np.abs(((hues + shift) % 1) * 6 - 3) - 1 for shift in (0, 2 / 3, 1 / 3)], 1).clip(0, 1)
    brightness = rng.uniform(0.4, 1.0, (count, 1))
    images = (colours * brightness)[:, :, None, None] * 160 + rng.normal(48, 24, (count, 3, 32, 32))
    rows, cols = 4 + (labels * 7) % 16, 4 + (labels * 11) % 16
    for offset_r in range(10):
        for offset_c in range(10):
            images[np.arange(count), :, rows + offset_r, cols + offset_c] = 240
    return images.clip(0, 255).astype(np.uint8)


def write_cifar_stand_in(name: str = "cifar10", root: Path | None = None, *, train_per_class: int = 5000,
                         test_per_class: int = 1000, seed: int = 0) -> Path:
    """Generated images in CIFAR `name`'s python format (its files, batch layout and meta file), marked as a
    stand-in with its files' sha256, under `root`; returns the folder. Real CIFAR already there is kept."""
    from helpers.data.cifar import install_folder

    root = Path(root) if root is not None else caches.DATA_ROOT
    if caches.cifar_status(name, root) == "present":
        return caches.cifar_folder(name, root)
    source = caches.cifar_source(name)
    classes = CIFAR10_CLASSES if name == "cifar10" else [f"class_{i:02d}" for i in range(100)]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    rng = np.random.default_rng(seed)
    files = {}
    for batch_files, per_class in ((source.train_list, train_per_class), (source.test_list, test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(classes)), per_class))
        for (filename, _), part in zip(batch_files, np.array_split(labels, len(batch_files))):
            images = stand_in_images(part, len(classes), rng)
            files[filename] = pickle.dumps({b"batch_label": b"stand-in", label_key.encode(): part.tolist(),
                                            b"data": images.reshape(len(part), -1)}, protocol=4)
    files[source.meta["filename"]] = pickle.dumps({source.meta["key"].encode(): [c.encode() for c in classes]},
                                                  protocol=4)
    staging = root / f".{source.base_folder}.{os.getpid()}.stand-in"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for filename, content in files.items():
        (staging / filename).write_bytes(content)
    caches.write_marker(staging, f"{name} with generated images", sorted(files))
    return install_folder(staging, name, root)


def prefetch_real(model_id: str = profiles.GPU_MODEL, dataset: str = "cifar10") -> list[str]:
    """Download the real model and dataset (resuming interrupted downloads), check them, and say what is stored."""
    from helpers import models
    from helpers.data.cifar import fetch_cifar, read_real_cifar

    lines = []
    models.load_model(model_id, CIFAR10_CLASSES)  # downloads what from_pretrained needs and loads it: checked
    snapshot = caches.hub_snapshot(model_id)
    lines.append(f"model   {model_id}: {megabytes(caches.folder_bytes(snapshot))} in {snapshot}, loads")
    folder = fetch_cifar(dataset)
    train, test, _ = read_real_cifar(dataset, folder.parent)
    lines.append(f"data    {dataset}: {megabytes(caches.folder_bytes(folder))} in {folder}, every file's published "
                 f"md5 checked ({len(train):,} training and {len(test):,} test images)")
    return lines


def prefetch_stand_ins(model_id: str = profiles.GPU_MODEL, dataset: str = "cifar10") -> list[str]:
    """Write the stand-ins (or keep the real ones already cached), and say what is stored."""
    lines = []
    real = caches.model_status(model_id) == "real"
    snapshot = write_model_stand_in(model_id)
    kind = "the real model is cached, kept" if real else "stand-in, random weights"
    lines.append(f"model   {model_id}: {kind}, {megabytes(caches.folder_bytes(snapshot))} in {snapshot}")
    real = caches.cifar_status(dataset) == "present"
    folder = write_cifar_stand_in(dataset)
    kind = "the real dataset is cached, kept" if real else "stand-in, generated images"
    lines.append(f"data    {dataset}: {kind}, {megabytes(caches.folder_bytes(folder))} in {folder}")
    if not real:
        lines.append(f"(a notebook on stand-ins says so at the top; its accuracies are meaningless; "
                     f"a real download later replaces them; {STAND_IN_MARKER} marks each)")
    return lines


def prefetch(stand_in: bool = False) -> int:
    """The command: print what was stored; 1 with one sentence when the real assets cannot be reached."""
    if not stand_in and not profiles.is_online():
        print(OFFLINE)
        return 1
    print("\n".join(prefetch_stand_ins() if stand_in else prefetch_real()))
    return 0
