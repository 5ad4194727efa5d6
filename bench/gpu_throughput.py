"""Training throughput of ViT-B/16 at 224 px on one GPU: the kit's step against bare loops, in one run.

Every row trains on the same data: synthetic CIFAR-sized uint8 images resident on the GPU
(`helpers.train.DeviceImages`: per-image crop and flip and the resize to 224 done there, in bf16),
a fresh model from the same seed (random init, nothing is downloaded), batch 256, bf16 autocast,
AdamW (fused on a GPU), clipping at 1.0:

    kit eager / compiled            fit()'s own step (`train.measure_training_throughput` -> `train_step`),
                                    compiled the kit's way (`train.maybe_compile`: layer by layer)
    transformers eager / compiled   the same ViTForImageClassification in a bare loop; compiled whole,
                                    as `torch.compile(model)`
    timm eager / compiled           timm's vit_base_patch16_224 in the same bare loop (rows skipped
                                    without timm: `pip install -e .[bench]`)

Each row prints images/s, MFU (`models.training_flops_per_image`: 105.5 GFLOP per image for
ViT-B/16, against --peak-tflops, 989 for an H100/H200's dense bf16), the peak of allocated GPU
memory, and the warm-up's seconds (compilation included); then the kit's default (eager unless
`helpers.train.loop.COMPILE_ON_GPU`) and its best over the best peer. `--profile-kernels` adds the
top GPU kernels of the two compiled ViTForImageClassification rows (kit and transformers) and which
attention kernel each used (flash, memory-efficient, cuDNN, or the unfused math path).

An H200 measured before (torch 2.11, transformers 5.17, timm 1.0.29; peers by a separate script):
kit eager 2,697 images/s, kit compiled whole 2,333, transformers eager 2,743 (19.5 GiB), timm eager
2,723 (17.7 GiB), timm compiled 3,454. The kit's 37.2 GiB (60.7 compiled) held 17.7 GiB per earlier
measurement in the process that the measurement itself leaked (one forward pass, since fixed).

The GPU session (about 5 minutes on an H200; `timeout` is the hard stop of each part, and
--budget-s skips the rows that would start after it, so the table always ends with its summary):

    timeout 150 python -m pytest tests/test_speed.py tests/test_compile.py -q -rs -s   # the GPU tests, ~1-2 min
    timeout 300 python bench/gpu_throughput.py --profile-kernels --budget-s 240      # ~3-4 min: three
                                                                                     # inductor compiles
If "kit compiled" beats "kit eager", set `COMPILE_ON_GPU = True` in helpers/train/loop.py: `fit()`
(and the notebooks' gpu profile) then compile by default on a GPU. `TORCH_LOGS=graph_breaks,recompiles`
in front of the bench shows any graph break or recompile in the timed steps.

    python bench/gpu_throughput.py --no-compile --steps 50
    python bench/gpu_throughput.py --tiny                # the same code on a CPU, tiny models, seconds

`--tiny` runs the kit's tiny ViT (and timm's twin of it) on 16 px images resized to 32 px and
compiles with the `aot_eager` backend (an inductor compile takes minutes on a CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, models, profiles, train
from helpers.train import loop

try:
    import timm
except ImportError:  # the `bench` extra is not installed: the timm rows are skipped
    timm = None

H100_BF16_DENSE_TFLOPS = 989.0
CIFAR_TRAIN_IMAGES = 50_000
ATTENTION_KERNELS = {"flash": "flash", "fmha": "memory-efficient", "efficient_attention": "memory-efficient",
                     "cudnn": "cuDNN", "sdpa": "cuDNN"}


@dataclasses.dataclass
class Row:
    name: str
    images_per_second: float
    peak_gpu_mib: float | None
    warmup_seconds: float


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny ViTs on a CPU-sized problem (for tests)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256, or 16 with --tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 30, or 3 with --tiny)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 10, or 1)")
    parser.add_argument("--no-compile", action="store_true", help="only the eager rows")
    parser.add_argument("--profile-kernels", action="store_true",
                        help="the top kernels of the kit's and transformers' compiled rows (CPU operators with --tiny)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the rows that would start after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="the GPU's dense bf16 peak, for MFU")
    return parser.parse_args(argv)


def problem(tiny: bool):
    """(ViT config, uint8 images, settings, compile backend)."""
    if tiny:
        images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
        return models.tiny_vit_config(10), images, profiles.resolve("smoke"), "aot_eager"
    if not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: run with --tiny for the CPU-sized check.")
    torch.set_float32_matmul_precision("high")  # TF32 for the few matmuls autocast leaves in float32
    images = torch.randint(0, 256, (CIFAR_TRAIN_IMAGES, 3, 32, 32), dtype=torch.uint8)
    vit_b16 = ViTConfig(image_size=224, patch_size=16, num_labels=10)
    return vit_b16, images, profiles.resolve("gpu", precision="bf16"), True


def timm_model(tiny: bool):
    """timm's ViT-B/16 (or the tiny ViT's twin), or None when timm is not installed."""
    if timm is None:
        return None
    if tiny:
        return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=4,
                                                                num_heads=4, mlp_ratio=4, num_classes=10)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)


def fresh_start(device: torch.device) -> None:
    """Forget the previous row: its compiled graphs (each row pays its own compile), its memory and its peak."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bare_loop(model, dataset, settings, *, batch_size: int, steps: int, warmup_steps: int, backend) -> Row:
    """A plain training loop around `model`: autocast forward and loss, backward, clip, AdamW, zero_grad."""
    device = dataset.images.device
    model = model.to(device).train()
    runner = torch.compile(model, backend=loop.compile_backend(backend, device)) if backend else model
    optimizer = train.make_optimizer("adamw", train.parameter_groups(model, settings.weight_decay), settings.lr)
    precision = train.mixed_precision_for(settings)[0]
    autocast = dict(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                    enabled=precision != "no")
    loader = dataset.loader(batch_size, shuffle_generator=torch.Generator().manual_seed(settings.seed))

    def run(count: int) -> float:
        started, done = time.perf_counter(), 0
        while done < count:
            for images, labels in loader:
                with torch.autocast(**autocast):
                    loss = F.cross_entropy(train.logits_of(runner, images), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1
                if done == count:
                    break
        train.synchronize(device)
        return time.perf_counter() - started

    warmup_seconds = run(warmup_steps)
    seconds = run(steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Row("", steps * batch_size / seconds, peak, warmup_seconds)


def kit_step(model, dataset, settings, *, batch_size: int, steps: int, warmup_steps: int, backend) -> Row:
    """fit()'s step as `measure_training_throughput` times it."""
    result = train.measure_training_throughput(model, dataset, settings, batch_size=batch_size, steps=steps,
                                               warmup_steps=warmup_steps, torch_compile=backend)
    return Row("", result.images_per_second, result.peak_gpu_mib, result.warmup_seconds)


def print_top_kernels(name: str, measure, device: torch.device, top: int = 8) -> None:
    """Run `measure()` (a few steps, graphs already compiled) under the profiler; print its top kernels."""
    activity = torch.profiler.ProfilerActivity.CUDA if device.type == "cuda" else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as profiler:
        measure()
    on_device = device.type == "cuda"
    events = [e for e in profiler.key_averages()
              if (e.device_type == torch.autograd.DeviceType.CUDA) == on_device and e.key != "ProfilerStep*"]
    time_of = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1
    print(f"  top {'kernels' if on_device else 'CPU operators'} of {name} (share of {total / 1e3:,.1f} ms):")
    for event in sorted(events, key=time_of, reverse=True)[:top]:
        print(f"    {time_of(event) / total:6.1%}  {event.count:>5}x  {event.key[:90]}")
    print(f"  attention kernel: {attention_kind([e.key for e in events]) if on_device else 'n/a on a CPU'}")


def attention_kind(kernel_names: list[str]) -> str:
    """Which of scaled_dot_product_attention's kernels ran, judged by kernel names (inductor's own kernels left out:
    they are named after the operations they feed, attention among them)."""
    found = sorted({kind for name in kernel_names if not name.startswith("triton")
                    for part, kind in ATTENTION_KERNELS.items() if part in name.lower()})
    return ", ".join(found) if found else "none of the fused ones: the unfused math path (matmul + softmax)"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    config, images, settings, backend = problem(args.tiny)
    batch_size = args.batch_size or (16 if args.tiny else 256)
    timing = dict(batch_size=batch_size, steps=args.steps or (3 if args.tiny else 30),
                  warmup_steps=args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 10))
    flops_per_image = models.training_flops_per_image(config)
    spec = data.ImageSpec((config.image_size, config.image_size), (0.5,) * 3, (0.5,) * 3)
    dataset = train.DeviceImages(images, torch.randint(0, 10, (len(images),)).tolist(), spec, augment=True)
    device = dataset.images.device
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}: torch {torch.__version__}, "
          f"transformers {transformers.__version__}, timm {timm.__version__ if timm else 'not installed'}; "
          f"{config.num_hidden_layers}-layer ViT, width {config.hidden_size}, {config.image_size} px; "
          f"{len(images):,} uint8 images {tuple(images.shape[1:])} on {device}, {dataset.dtype}; batch {batch_size}, "
          f"precision {train.mixed_precision_for(settings)[0]}; {flops_per_image / 1e9:.4g} GFLOP per training image",
          flush=True)

    families = [("kit", lambda: ViTForImageClassification(config), kit_step),
                ("transformers", lambda: ViTForImageClassification(config), bare_loop),
                ("timm", lambda: timm_model(args.tiny), bare_loop)]
    rows: dict[str, Row] = {}
    for family, make_model, measure in families:
        for compiled in [False] if args.no_compile else [False, backend]:
            name = f"{family} " + (f"compiled ({loop.compile_backend(compiled, device)})" if compiled else "eager")
            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                print(f"{name:<34} skipped: the {args.budget_s:.0f} s budget is spent", flush=True)
                continue
            fresh_start(device)
            torch.manual_seed(0)
            model = make_model()  # a fresh model per row: the same random init, nothing left from the last row
            if model is None:
                print(f"{name:<34} skipped: timm is not installed (pip install -e .[bench])", flush=True)
                continue
            row = rows[name] = dataclasses.replace(measure(model, dataset, settings, backend=compiled, **timing),
                                                   name=name)
            mfu = row.images_per_second * flops_per_image / (args.peak_tflops * 1e12)
            print(f"{name:<34} {row.images_per_second:>10,.1f} images/s"
                  + (f"  MFU {mfu:5.1%}" if device.type == "cuda" else "")
                  + (f"  peak {row.peak_gpu_mib / 1024:5.1f} GiB" if row.peak_gpu_mib is not None else "")
                  + f"  warm-up {row.warmup_seconds:5.1f} s", flush=True)
            if args.profile_kernels and compiled and family != "timm":
                few_steps = dict(timing, steps=3, warmup_steps=0)
                print_top_kernels(name, functools.partial(measure, model, dataset, settings, backend=compiled,
                                                          **few_steps), device)
            del model
    print(summary(rows, device), flush=True)
    return 0


def summary(rows: dict[str, Row], device: torch.device) -> str:
    """Compiled against eager for the kit, then the kit's best and its default (`fit()`'s choice here) against the
    best peer."""
    kit = {name: row for name, row in rows.items() if name.startswith("kit ")}
    peers = [row for name, row in rows.items() if not name.startswith("kit ")]
    if not kit or not peers:
        return "kit / best peer: not measured (out of budget)"
    backend = loop.compile_backend("auto", device)
    default = kit.get("kit eager" if backend is None else f"kit compiled ({backend})")
    eager, compiled = kit.get("kit eager"), next((row for name, row in kit.items() if name != "kit eager"), None)
    best_peer = max(peers, key=lambda row: row.images_per_second)
    lines = []
    if eager and compiled:
        lines.append(f"kit compiled / kit eager: {compiled.images_per_second / eager.images_per_second:.2f} "
                     f"(COMPILE_ON_GPU = {loop.COMPILE_ON_GPU}: fit() trains {backend or 'eagerly'} here)")
    for label, row in [("kit best", max(kit.values(), key=lambda row: row.images_per_second)),
                       ("kit default", default)]:
        if row is not None:
            ratio = row.images_per_second / best_peer.images_per_second
            lines.append(f"{label} / best peer: {ratio:.2f} ({row.name} {row.images_per_second:,.0f} vs "
                         f"{best_peer.name} {best_peer.images_per_second:,.0f} images/s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
