"""How fast `fit()`'s step trains and how much memory it takes (lesson 05, bench/gpu_throughput.py)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from helpers.profiles import Settings
from helpers.train.checkpoint import left_as_it_was
from helpers.train.device_images import DeviceImages
from helpers.train.loop import (
    compile_backend,
    cross_entropy,
    logits_of,
    make_accelerator,
    maybe_compile,
    seed_everything,
    train_step,
)
from helpers.train.optim import make_optimizer, parameter_groups


@dataclass
class Throughput:
    """Training speed of one configuration: images per second, and memory (lesson 05)."""

    batch_size: int
    compiled: str | bool  # the torch.compile backend, or False for eager
    images_per_second: float
    saved_for_backward_mib: float  # activations autograd keeps for the backward pass (any device)
    peak_gpu_mib: float | None  # all GPU memory at its peak (None on a CPU)
    warmup_seconds: float = 0.0  # the untimed first steps, compilation included


def saved_for_backward_bytes(model: torch.nn.Module, images: torch.Tensor,
                             targets: torch.Tensor | None = None) -> int:
    """Bytes of the tensors autograd saves during one forward pass of `images` (and the loss, when
    `targets` are given), each storage counted once, parameters left out (lesson 05).

    The hook hands autograd a detached alias, not the tensor itself: a saved output that keeps its
    `grad_fn` closes a reference cycle through the graph that garbage collection cannot break when
    backward never runs (as here), and the whole pass's activations would stay allocated for good.
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            sizes[storage.data_ptr()] = storage.nbytes()
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = logits_of(model, images)
        if targets is not None:
            cross_entropy(logits, targets)
    return sum(sizes.values())


def measure_training_throughput(model: torch.nn.Module, dataset: DeviceImages, settings: Settings, *,
                                batch_size: int, steps: int = 10, warmup_steps: int = 3,
                                torch_compile: bool | str = "auto") -> Throughput:
    """Images per second of `fit()`'s training step (`train_step`), after `warmup_steps` untimed steps
    (compilation happens there), and the memory it takes. `torch_compile` as in `fit()`. The model's
    weights are put back afterwards (see `left_as_it_was`) (lesson 05).

    The GPU peak is that of the warm-up and timed steps, as in `fit()`: weights, gradients, AdamW's
    state and one step's activations.
    """
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"Need steps >= 1 and warmup_steps >= 0, got {steps} and {warmup_steps}.")
    settings = dataclasses.replace(settings, batch_size=batch_size, grad_accum=1)
    with left_as_it_was(model):
        accelerator = make_accelerator(settings)
        seed_everything(settings.seed)
        optimizer = make_optimizer("adamw", parameter_groups(model, settings.weight_decay), settings.lr)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        prepared.train()
        loader = dataset.loader(batch_size, shuffle_generator=torch.Generator().manual_seed(settings.seed))
        saved = saved_for_backward_bytes(prepared, next(iter(loader))[0])
        backend = compile_backend(torch_compile, accelerator.device)
        runner = maybe_compile(prepared, backend or False)
        on_gpu = accelerator.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(accelerator.device)

        def run(count: int) -> float:
            started, done = time.perf_counter(), 0
            while done < count:
                for images, labels in loader:
                    train_step(runner, images, labels, optimizer, None, accelerator, settings.max_grad_norm)
                    done += 1
                    if done == count:
                        break
            synchronize(accelerator.device)
            return time.perf_counter() - started

        warmup_seconds = run(warmup_steps)
        seconds = run(steps)
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**20 if on_gpu else None
    return Throughput(batch_size, backend or False, steps * batch_size / seconds, saved / 2**20, peak,
                      warmup_seconds)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not only its launch (lesson 05)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
