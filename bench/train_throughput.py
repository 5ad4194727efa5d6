"""Training throughput of `helpers.train.fit` vs a bare PyTorch loop vs `transformers.Trainer`.

Same tiny ViT, same data (digits, 32 px), same batch size, optimizer and schedule; each
epoch ends with one validation pass in all three. Runs are interleaved and repeated, and
the median images/s of each is compared, so machine noise hits all three alike.

    .venv/bin/python bench/train_throughput.py [--epochs 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import Trainer, TrainingArguments, ViTForImageClassification

from helpers import data, models, profiles, train
from helpers.lessons import l05_training as l05


def make_data(val_size: int):
    splits = data.load_dataset("digits", seed=0, eval_size=val_size)
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    return splits.with_transforms(data.eval_transform(spec))


def fresh_model(num_labels: int):
    torch.manual_seed(0)
    return ViTForImageClassification(models.tiny_vit_config(num_labels))


def run_fit(splits, settings) -> None:
    train.fit(fresh_model(10), splits.train, splits.val, settings, progress=False)


def run_bare_loop(splits, settings) -> None:
    """The loop a careful person writes by hand: AdamW groups, warmup+cosine, clipping, validation."""
    model = fresh_model(10)
    generator = torch.Generator()
    loader = data.make_loader(splits.train, settings.batch_size, shuffle_generator=generator)
    val_loader = data.make_loader(splits.val, settings.batch_size)
    optimizer = torch.optim.AdamW(train.parameter_groups(model, settings.weight_decay), lr=settings.lr)
    total = len(loader) * settings.epochs
    scheduler = train.warmup_cosine(optimizer, round(settings.warmup_ratio * total), total)
    for epoch in range(settings.epochs):
        generator.manual_seed(epoch)
        model.train()
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        model.eval()
        with torch.inference_mode():
            hits = sum((model(x).logits.argmax(-1) == y).sum().item() for x, y in val_loader)
        assert 0 <= hits <= len(splits.val)


def run_trainer(splits, settings) -> None:
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
            learning_rate=settings.lr, weight_decay=settings.weight_decay, warmup_steps=settings.warmup_ratio,
            lr_scheduler_type="cosine", max_grad_norm=settings.max_grad_norm, use_cpu=not torch.cuda.is_available(),
            eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
            dataloader_num_workers=0, seed=settings.seed,
        )
        Trainer(model=fresh_model(10), args=arguments, train_dataset=splits.train, eval_dataset=splits.val,
                data_collator=l05.collate_for_trainer).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--val-size", type=int, default=100)
    args = parser.parse_args()
    settings = profiles.resolve("cpu", epochs=args.epochs)
    splits = make_data(args.val_size)
    images = len(splits.train) * args.epochs
    runners = {"bare loop": run_bare_loop, "fit()": run_fit, "Trainer": run_trainer}
    speeds = {name: [] for name in runners}
    run_fit(splits, profiles.resolve("cpu", epochs=1))  # warm-up: first-call costs stay out of the numbers
    for repeat in range(args.repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner(splits, settings)
            speeds[name].append(images / (time.perf_counter() - started))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {s[-1]:.0f} img/s" for n, s in speeds.items()),
              flush=True)
    baseline = statistics.median(speeds["bare loop"])
    print(f"\n{torch.get_num_threads()} threads, {images} training images per run, batch {settings.batch_size}")
    print(f"{'runner':<10} {'median img/s':>12} {'vs bare loop':>13}")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:<10} {median:>12.0f} {median / baseline:>12.2f}x")


if __name__ == "__main__":
    main()
