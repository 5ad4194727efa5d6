"""Shipping a classifier (lesson 06): classify a file, size on disk, inference throughput, ONNX export."""
from __future__ import annotations

import importlib.util
import os
import time
from contextlib import nullcontext
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
