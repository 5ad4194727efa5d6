"""Shipping a classifier (lessons 06 and 07): classify a file, size on disk, inference throughput, ONNX export,
a folder `pipeline()` loads with its model card, and LoRA adapters saved, reloaded and swapped on their own."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from helpers.data.images import read_rgb
from helpers.models import device_of, eval_mode
from helpers.train.loop import logits_of


def classify_file(model: torch.nn.Module, path: str | os.PathLike, transform) -> tuple[str, float]:
    """Top-1 class name (from ``model.config.id2label``) and its probability for one image file (lesson 06).

    The file is read with ``helpers.data.read_rgb`` and passed through ``transform`` (the model's eval
    transform), exactly as the kit's datasets do.
    """
    image = transform(tv_tensors.Image(read_rgb(Path(path))))
    with eval_mode(model), torch.inference_mode():
        probs = logits_of(model, image[None].to(device_of(model))).float().softmax(dim=-1)[0]
    top = int(probs.argmax())
    return model.config.id2label[top], float(probs[top])


def throughput(
    model: torch.nn.Module,
    image_size: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128),
    *,
    min_seconds: float = 0.5,
    precision: str = "no",
) -> dict[int, float]:
    """Inference images per second for each batch size, on random images [B, 3, H, W] where the model is (lesson 06).

    Per batch size: one untimed warm-up pass, then passes until ``min_seconds`` have gone by (CUDA is
    synchronised before the clock is read). ``precision`` "bf16" or "fp16" autocasts on a GPU.
    """
    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16'; got {precision!r}.")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be one or more positive integers; got {batch_sizes!r}.")
    device = device_of(model)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "no" and device.type == "cuda"
        else nullcontext()
    )
    results = {}
    with eval_mode(model), torch.inference_mode(), autocast:
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, *image_size, device=device)
            logits_of(model, images)
            passes, started = 0, time.perf_counter()
            while True:
                logits_of(model, images)
                passes += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - started
                if elapsed >= min_seconds:
                    break
            results[batch_size] = passes * batch_size / elapsed
    return results


def size_on_disk(folder: str | os.PathLike) -> int:
    """Bytes taken by all files under ``folder`` (e.g. a save_pretrained folder) (lesson 06)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder at {folder}: save the model there first (save_pretrained).")
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def onnx_available() -> bool:
    """True when ONNX export can run here: torch's exporter needs the onnx and onnxscript packages (lesson 06)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


class _LogitsOnly(torch.nn.Module):
    """Wraps a classifier so its forward returns the logits tensor alone (what ONNX export needs)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, images)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, example_images: torch.Tensor) -> Path:
    """Export the classifier to one ONNX file: input ``images`` [batch, 3, H, W] (any batch), output ``logits`` (lesson 06)."""
    if not onnx_available():
        raise ModuleNotFoundError(
            "ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript onnxruntime."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _LogitsOnly(model)
    with eval_mode(wrapped):
        torch.onnx.export(
            wrapped,
            (example_images.to(device_of(model)),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim.DYNAMIC}},
            external_data=False,
            dynamo=True,
            verbose=False,  # no progress lines in a notebook's saved output
        )
    return path


def onnx_max_difference(path: str | os.PathLike, model: torch.nn.Module, images: torch.Tensor) -> float:
    """Largest absolute difference between the logits of an exported ONNX file and of the PyTorch model (lesson 06).

    Runs the file with onnxruntime when it is installed, else with onnx's (slow) reference evaluator.
    """
    inputs = images.detach().float().cpu().numpy()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    else:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))
        onnx_logits = evaluator.run(None, {evaluator.input_names[0]: inputs})[0]
    with eval_mode(model), torch.inference_mode():
        torch_logits = logits_of(model, images.to(device_of(model))).float().cpu().numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


@dataclass
class ModelCard:
    """What a shipped model was trained on and how well it did, written as the folder's README.md (lesson 07)."""

    base_model: str
    classes: list[str]
    data: str  # what the images are, where they come from, their licence
    splits: dict[str, int]  # images per split
    split_rule: str  # how the splits were made (e.g. groups of near-duplicates kept together)
    strategy: str
    test_accuracy: float
    interval: tuple[float, float]  # 95% bootstrap interval of the test accuracy
    ece: float  # expected calibration error on the test set
    temperature: float  # fitted on validation
    per_class: str  # a Markdown table (ClassReport.to_markdown())
    failure_modes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    limits: str = ""

    def to_markdown(self) -> str:
        """The card: Hugging Face front matter, then data, splits, metrics, calibration, failure modes, settings."""
        low, high = self.interval
        splits = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        settings = "\n".join(f"| {key} | {value} |" for key, value in self.settings.items())
        failures = "\n".join(f"- {line}" for line in self.failure_modes) or "- none found on the test set"
        return "\n".join([
            "---", "library_name: transformers", "pipeline_tag: image-classification",
            f"base_model: {self.base_model}" if "/" in self.base_model else "tags: [vit-course]", "---", "",
            f"# Image classifier: {', '.join(self.classes)}", "",
            f"Fine-tuned from `{self.base_model}` with strategy **{self.strategy}**.", "",
            "## Data", self.data, "", "## Splits", f"{splits}. {self.split_rule}", "",
            "## Metrics (test set, evaluated once)",
            f"Accuracy **{self.test_accuracy:.1%}**, 95% bootstrap interval [{low:.1%}, {high:.1%}].", "",
            self.per_class, "", "## Calibration",
            f"Expected calibration error {self.ece:.1%}; temperature fitted on validation: T = {self.temperature:.3f} "
            "(divide the logits by T for calibrated probabilities).", "",
            "## Known failure modes", failures, "", "## Limits", self.limits or "Not measured beyond this test set.",
            "", "## Training settings", "| setting | value |", "|---|---|", settings, "",
        ])


def save_for_pipeline(model: torch.nn.Module, processor, folder: str | os.PathLike, card: ModelCard | None = None) -> Path:
    """Write a folder that `transformers.pipeline("image-classification")` loads: weights, config, preprocessing,
    and the model card as README.md (lesson 07). A LoRA model is saved merged into plain weights (it stays a
    LoRA model itself).

    Written into a temporary folder and renamed, so an interrupted save leaves no half-written model.
    """
    folder = Path(folder).expanduser()
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model  # keep `model`
    plain.save_pretrained(staging)
    processor.save_pretrained(staging)
    if card is not None:
        (staging / "README.md").write_text(card.to_markdown())
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def pipeline_predictions(folder: str | os.PathLike, paths, device: str | None = None) -> list[tuple[str, float]]:
    """Top-1 (label, score) of `transformers.pipeline("image-classification")` loaded from `folder`, per file (lesson 07)."""
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(folder), device=device or "cpu")
    return [(best["label"], float(best["score"])) for best in
            (classifier(str(path), top_k=1)[0] for path in paths)]


@contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question (is_gradient_checkpointing): nothing for the user to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def save_adapter(peft_model, folder: str | os.PathLike) -> Path:
    """Save only a LoRA model's adapters and its trained classifier head (a few MB, not the base model) (lesson 07).

    The head is saved because `helpers.freezing.add_lora` lists it in `modules_to_save`; without that,
    a reloaded adapter would sit on a randomly initialised head.
    """
    folder = Path(folder).expanduser()
    config = peft_model.peft_config[peft_model.active_adapter]
    if not any("classifier" in name for name in (config.modules_to_save or [])):
        raise ValueError("This LoRA model does not keep its classifier head (modules_to_save): the saved adapter "
                         "would reload onto a random head. Build it with helpers.freezing.add_lora.")
    with _quiet_peft():
        peft_model.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(peft_model.config.id2label))
    return folder


def load_adapters(base_model: torch.nn.Module, adapters: dict[str, str | os.PathLike]):
    """One base model with several saved adapters loaded by name; `model.set_adapter(name)` switches (lesson 07).

    The first adapter is active. Each brings its own classifier head, so switching needs no reload.
    """
    from peft import PeftModel

    if not adapters:
        raise ValueError("Give at least one adapter: {name: folder written by save_adapter}.")
    (first_name, first_folder), *others = adapters.items()
    with _quiet_peft():
        model = PeftModel.from_pretrained(base_model, str(first_folder), adapter_name=first_name)
        for name, folder in others:
            model.load_adapter(str(folder), adapter_name=name)
    model.set_adapter(first_name)
    return model.eval()
