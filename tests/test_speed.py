"""The memory `fit()`'s step takes and the kit's measurement of it; the device input path never waits for the GPU."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, models, profiles, train

NEEDS_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: run in the GPU session (see bench/gpu_throughput.py's docstring)")
SPEC = data.ImageSpec((32, 32), (0.5,) * 3, (0.25,) * 3)


class OperatorLog(TorchDispatchMode):
    """The name of every tensor operation run inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def device_images(count: int = 64, size: int = 16) -> train.DeviceImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return train.DeviceImages(images, [i % 10 for i in range(count)], SPEC, augment=True)


def test_counting_saved_tensors_leaves_none_of_them_alive():
    # Handing autograd the tensor itself would tie a saved output to its own grad_fn in a cycle no gc.collect()
    # breaks: every activation of the pass, the input among them, would stay allocated for good.
    torch.manual_seed(0)
    model = ViTForImageClassification(models.tiny_vit_config(10)).train()
    images = torch.randn(8, 3, 32, 32)
    input_alive = weakref.ref(images)
    saved = train.saved_for_backward_bytes(model, images, torch.zeros(8, dtype=torch.long))
    del images
    gc.collect()
    assert saved > 0 and input_alive() is None


def test_a_prepared_batch_copies_nothing_from_the_host_but_its_indices():
    # A tensor made from Python values on a GPU is a copy the CPU waits for (mean and std were, every batch).
    dataset = device_images()
    dataset.batch([0, 1])  # the normalisation's constants are made once, here
    with OperatorLog() as log:
        images, labels = dataset.batch([3, 5, 7])
    assert log.names.count("aten.lift_fresh.default") == 1, log.names
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [3, 5, 7]


@NEEDS_GPU
def test_preparing_batches_on_the_gpu_never_waits_for_it():
    dataset = device_images()
    dataset.batch([0, 1])
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in dataset.loader(16, shuffle_generator=torch.Generator().manual_seed(0)):
            pass
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.is_cuda and labels.is_cuda


@NEEDS_GPU
def test_the_training_step_never_waits_for_the_gpu():
    # Clipping, fused AdamW and the loss stay on the GPU: the CPU queues step after step without a sync.
    settings = profiles.resolve("gpu", precision="bf16", batch_size=16)
    accelerator = train.make_accelerator(settings)
    model = ViTForImageClassification(models.tiny_vit_config(10))
    optimizer = train.make_optimizer("adamw", train.parameter_groups(model, settings.weight_decay), settings.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = train.make_scheduler(optimizer, "warmup_cosine", 2, 8)
    batches = list(device_images().loader(16))
    step = lambda batch: train.train_step(model, *batch, optimizer, scheduler, accelerator,  # noqa: E731
                                          settings.max_grad_norm)
    step(batches[0])
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(batch) for batch in batches[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(losses) == 3 and all(loss.is_cuda for loss in losses)


@NEEDS_GPU
def test_left_as_it_was_keeps_its_copy_of_the_weights_off_the_gpu():
    model = ViTForImageClassification(ViTConfig(num_hidden_layers=4)).cuda()  # 115 MB of float32 weights
    before = torch.cuda.memory_allocated()
    with train.left_as_it_was(model):
        inside = torch.cuda.memory_allocated()
    assert inside - before < 2**20


@NEEDS_GPU
def test_the_kits_step_takes_no_more_gpu_memory_than_a_bare_loop():
    # The bare loop: autocast forward and loss, backward, clipping, fused AdamW. The kit's measurement of
    # fit()'s step must peak within 10% of it, and leave nothing behind when it returns.
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                       intermediate_size=1536, num_labels=10)
    settings = profiles.resolve("gpu", precision="bf16")
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    dataset = train.DeviceImages(images, [i % 10 for i in range(256)], data.ImageSpec((224, 224), (0.5,) * 3,
                                                                                      (0.5,) * 3), augment=True)
    torch.manual_seed(0)
    model = ViTForImageClassification(config).cuda()
    optimizer = train.make_optimizer("adamw", train.parameter_groups(model, settings.weight_decay), settings.lr)
    torch.cuda.reset_peak_memory_stats()
    for batch, labels in list(dataset.loader(64))[:3]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(batch).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    bare_peak = torch.cuda.max_memory_allocated() / 2**20
    del optimizer, loss
    model.zero_grad(set_to_none=True)
    gc.collect()
    resting = torch.cuda.memory_allocated()
    kit = train.measure_training_throughput(model, dataset, settings, batch_size=64, steps=3, warmup_steps=1,
                                            torch_compile=False)
    gc.collect()
    assert torch.cuda.memory_allocated() - resting < 2**20, "the measurement left memory allocated"
    assert kit.peak_gpu_mib <= 1.1 * bare_peak, f"kit {kit.peak_gpu_mib:,.0f} MiB vs bare loop {bare_peak:,.0f} MiB"
