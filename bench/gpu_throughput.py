"""Training throughput of ViT-B/16 at 224 px on one GPU: images/s and model FLOP utilisation (MFU).

Random init (nothing is downloaded), synthetic CIFAR-sized uint8 images resident on the GPU
(`helpers.train.DeviceImages`: per-sample crop and flip and the resize to 224 on the GPU,
bf16), and `fit()`'s own training step (`helpers.train.train_step`: bf16 autocast, AdamW,
clipping), timed with and without `torch.compile`.

MFU counts 105.5 GFLOP per training image (3 x 2 x 17.58 GMAC) against the GPU's dense bf16
peak (H100 and H200: 989 TFLOP/s; set --peak-tflops for another card). The goal on one H100
is >= 3,750 images/s (about 40% MFU). Measured on one H200 (PyTorch 2.11, transformers 5.17):
eager 2,630 images/s (28% MFU) at batch 256, 2,490 at 128, 2,800 at 512 (72 GiB); inductor
2,270 at batch 256, slower than eager after about 50 s of compiling.

    python bench/gpu_throughput.py                       # on a GPU
    python bench/gpu_throughput.py --batch-size 512 --steps 50
    python bench/gpu_throughput.py --tiny                # the same code on a CPU, tiny model, seconds

`--tiny` runs the tiny ViT on 16 px images resized to 32 px, and compiles with the
`aot_eager` backend (an inductor compile takes minutes on a CPU); its MFU is left out,
as a CPU has no comparable peak.
"""
from __future__ import annotations

import argparse
import sys

import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, models, profiles, train

VIT_B16_TRAINING_FLOPS = 105.5e9  # per image at 224 px: 3 x 2 x 17.58 GMAC
H100_BF16_DENSE_TFLOPS = 989.0
CIFAR_TRAIN_IMAGES = 50_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny ViT on a CPU-sized problem (for tests)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256, or 16 with --tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30, or 3 with --tiny)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 10, or 1)")
    parser.add_argument("--no-compile", action="store_true", help="time only the eager step")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="the GPU's dense bf16 peak, for MFU")
    return parser.parse_args(argv)


def problem(tiny: bool):
    """(model, images on the device, settings, training FLOPs per image, compile backend)."""
    if tiny:
        config = models.tiny_vit_config(10)
        images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
        settings = profiles.resolve("smoke")
        return config, images, settings, models.training_flops_per_image(config), "aot_eager"
    if not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: run with --tiny for the CPU-sized check.")
    torch.set_float32_matmul_precision("high")  # TF32 for the few matmuls autocast leaves in float32
    config = ViTConfig(image_size=224, patch_size=16, num_labels=10)  # ViT-B/16
    images = torch.randint(0, 256, (CIFAR_TRAIN_IMAGES, 3, 32, 32), dtype=torch.uint8)
    settings = profiles.resolve("gpu", precision="bf16")
    return config, images, settings, VIT_B16_TRAINING_FLOPS, True


def main(argv=None) -> int:
    args = parse_args(argv)
    config, images, settings, flops_per_image, backend = problem(args.tiny)
    batch_size = args.batch_size or (16 if args.tiny else 256)
    steps = args.steps or (3 if args.tiny else 30)
    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 10)
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    spec = data.ImageSpec((config.image_size, config.image_size), (0.5,) * 3, (0.5,) * 3)
    dataset = train.DeviceImages(images, torch.randint(0, 10, (len(images),)).tolist(), spec, augment=True)
    device = dataset.images.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: {config.num_hidden_layers}-layer ViT, width {config.hidden_size}, {config.image_size} px; "
          f"{len(images):,} uint8 images {tuple(images.shape[1:])} on {device}, {dataset.dtype}; "
          f"batch {batch_size}, precision {train.mixed_precision_for(settings)[0]}; "
          f"{flops_per_image / 1e9:.4g} GFLOP per training image")
    for compiled in ([False] if args.no_compile else [False, backend]):
        result = train.measure_training_throughput(model, dataset, settings, batch_size=batch_size, steps=steps,
                                                   warmup_steps=warmup, torch_compile=compiled)
        mfu = "" if args.tiny else f"  MFU {result.images_per_second * flops_per_image / (args.peak_tflops * 1e12):.1%}"
        memory = f"  peak {result.peak_gpu_mib:,.0f} MiB" if result.peak_gpu_mib is not None else ""
        label = "eager" if not compiled else f"torch.compile ({'inductor' if compiled is True else compiled})"
        print(f"{label:<28} {result.images_per_second:>10,.1f} images/s{mfu}{memory}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
