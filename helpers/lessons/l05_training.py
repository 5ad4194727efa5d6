"""Lesson 05's companion: schedules drawn, accumulation shown numerically, throughput tables,
the same fine-tune on `transformers.Trainer`, `fit()` under torchrun, and the exercise checkers."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.course.checks import checker
from helpers.profiles import Settings
from helpers.progress import progress_bar
from helpers.train.checkpoint import left_as_it_was
from helpers.train.history import History
from helpers.train.loop import (
    cross_entropy,
    loader_for,
    logits_of,
    make_accelerator,
    mixed_precision_for,
    seed_everything,
    train_step,
)
from helpers.train.optim import (
    SCHEDULES,
    RunSteps,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    run_steps,
    schedule_curve,
)
from helpers.train.speed import Throughput, measure_training_throughput


def plot_schedules(lr: float, steps: RunSteps, schedules=SCHEDULES):
    """The lr of each schedule over the steps of one run, with the warmup shaded (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    for schedule in schedules:
        ax.plot(range(steps.total), schedule_curve(schedule, lr, steps), label=schedule)
    if steps.warmup:
        ax.axvspan(0, steps.warmup, color="grey", alpha=0.15, label="warmup")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"{steps.total} steps ({steps.per_epoch} per epoch), peak lr {lr:g}")
    ax.legend()
    fig.tight_layout()
    return fig


@checker
def check_lr_choice(lr: float, finder: LRFinderResult) -> bool:
    """Exercise checker: True when `lr` is a sound pick from the range test, else AssertionError saying why.

    Sound means between 1/30 and 1/3 of the lr at the loss minimum: on the falling part of the
    curve, well below where the loss turns up.
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise AssertionError(f"A learning rate must be a positive number, got {lr!r}.")
    low, high = finder.lr_at_min / 30, finder.lr_at_min / 3
    if lr > high:
        raise AssertionError(
            f"{lr:.1e} is too close to the lr at the loss minimum (or past it), where the loss is about to blow up: "
            "go about ten times lower than the minimum of the smoothed curve."
        )
    if lr < low:
        raise AssertionError(
            f"{lr:.1e} is more than 30 times below the lr at the loss minimum: training would crawl; pick about a "
            "tenth of the minimum of the smoothed curve."
        )
    print(f"Correct: {lr:.1e} lies on the falling part of the curve, about a decade below the minimum.")
    return True


def gradients(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
              micro_batches: int = 1) -> dict[str, torch.Tensor]:
    """The gradient of the mean loss over the batch, computed in `micro_batches` slices.

    Each slice's mean loss is weighted by its share of the batch before `backward()`, and the
    gradients add up across slices, which is what gradient accumulation does. The model runs in
    eval mode (no dropout draws), its `.grad`s are cleared afterwards and its mode restored.
    """
    if not 1 <= micro_batches <= len(images):
        raise ValueError(f"micro_batches must be between 1 and the batch size {len(images)}, got {micro_batches}.")
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for image_slice, target_slice in zip(images.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        loss = cross_entropy(logits_of(model, image_slice), target_slice)
        (loss * len(image_slice) / len(images)).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two dicts of tensors with the same keys."""
    if a.keys() != b.keys():
        raise ValueError("The two gradient dicts hold different parameters.")
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@checker
def check_accumulation(grad_accum: int, batch_size: int, target: int = 512, num_processes: int = 1) -> bool:
    """Exercise checker: True when `grad_accum` micro-batches of `batch_size` on `num_processes` processes
    make an effective batch of `target`, else AssertionError saying what is wrong."""
    if isinstance(grad_accum, bool) or not (isinstance(grad_accum, numbers.Integral) and grad_accum >= 1):
        raise AssertionError(f"grad_accum must be a whole number of at least 1, got {grad_accum!r}.")
    effective = grad_accum * batch_size * num_processes
    if effective != target:
        raise AssertionError(
            f"{grad_accum} x {batch_size} x {num_processes} process(es) = {effective} images per step, not {target}: "
            f"divide {target} by batch_size x processes."
        )
    print(f"Correct: {grad_accum} micro-batches of {batch_size} on {num_processes} process(es) "
          f"= one optimizer step per {target} images.")
    return True


@checker
def check_step_count(total: int, warmup: int, num_images: int, settings: Settings, grad_accum: int) -> bool:
    """Exercise checker: `total` optimizer steps and `warmup` warmup steps of a `fit()` run on `num_images` images
    with these settings and `grad_accum`, on one process (AssertionError with a hint when wrong)."""
    for name, value in (("total", total), ("warmup", warmup)):
        if not (isinstance(value, (int, np.integer)) and value >= 0):
            raise AssertionError(f"{name} must be a whole number of steps, got {value!r}.")
    expected = run_steps(num_images, dataclasses.replace(settings, grad_accum=grad_accum))
    batches = math.ceil(num_images / settings.batch_size)
    if total != expected.total:
        if total == batches * settings.epochs:
            raise AssertionError("That counts batches, not optimizer steps: with accumulation the optimizer steps "
                                 "once per grad_accum batches.")
        if total == (num_images // settings.batch_size) // grad_accum * settings.epochs:
            raise AssertionError("Both divisions round up in fit(): the last, smaller batch of an epoch is still a "
                                 "batch, and the last, shorter accumulation still ends in a step.")
        if total == batches // grad_accum * settings.epochs:
            raise AssertionError("The last accumulation of an epoch is shorter, but fit() still steps at the end of it: "
                                 "round the steps per epoch up.")
        raise AssertionError("Count the batches of an epoch (rounding up), then the optimizer steps per epoch (one per "
                             "grad_accum batches, rounding up), then multiply by the epochs.")
    if warmup != expected.warmup:
        raise AssertionError("The warmup is settings.warmup_ratio of the optimizer steps, rounded to a whole step.")
    print(f"Correct: {expected.per_epoch} steps per epoch x {settings.epochs} epochs = {expected.total} optimizer "
          f"steps, {expected.warmup} of them warmup: the schedule is {grad_accum}x shorter than the batches suggest.")
    return True


def median_throughput(model: torch.nn.Module, dataset, settings: Settings, batch_sizes, *, steps: int,
                      warmup_steps: int, repeats: int = 3, progress: bool = True) -> list[Throughput]:
    """`measure_training_throughput` at each batch size, `repeats` times; each row holds the median images/s."""
    rows = []
    for size in progress_bar(batch_sizes, desc="batch sizes", disable=not progress):
        measured = [measure_training_throughput(model, dataset, settings, batch_size=size, steps=steps,
                                                warmup_steps=warmup_steps) for _ in range(repeats)]
        median = statistics.median(row.images_per_second for row in measured)
        rows.append(dataclasses.replace(measured[0], images_per_second=median))
    return rows


def throughput_table(results: list[Throughput]) -> str:
    """A markdown table of `measure_training_throughput` results, one row per configuration."""
    lines = ["| batch size | compiled | images / s | saved for backward (MiB) | peak GPU memory (MiB) |",
             "|---|---|---|---|---|"]
    for r in results:
        peak = "-" if r.peak_gpu_mib is None else f"{r.peak_gpu_mib:,.0f}"
        lines.append(f"| {r.batch_size} | {r.compiled or 'no'} | {r.images_per_second:,.0f} | "
                     f"{r.saved_for_backward_mib:,.1f} | {peak} |")
    return "\n".join(lines)


def plot_throughput(results: list[Throughput]):
    """Images per second and memory against batch size (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    sizes = [r.batch_size for r in results]
    fig, (ax_speed, ax_memory) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_speed.plot(sizes, [r.images_per_second for r in results], marker="o")
    ax_speed.set(xscale="log", xlabel="batch size", ylabel="images / s", title="throughput")
    ax_memory.plot(sizes, [r.saved_for_backward_mib for r in results], marker="o", label="saved for backward")
    if all(r.peak_gpu_mib is not None for r in results):
        ax_memory.plot(sizes, [r.peak_gpu_mib for r in results], marker="o", label="peak GPU memory")
    ax_memory.set(xscale="log", yscale="log", xlabel="batch size", ylabel="MiB (log scale)", title="memory")
    ax_memory.legend(fontsize=8)
    saved = [r.saved_for_backward_mib for r in results]
    ax_memory.set_yticks(saved, [f"{value:,.0f}" for value in saved])
    for ax in (ax_speed, ax_memory):
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    fig.tight_layout()
    return fig


def collate_for_trainer(items) -> dict:
    """(image, label) items -> the dict of a batch that `transformers.Trainer` passes around."""
    images, labels = zip(*items)
    return {"pixel_values": torch.stack(images), "labels": torch.as_tensor(labels)}


def make_kit_trainer_class():
    """`transformers.Trainer` with the kit's loss: the model gets only the images (never `labels=`), and
    `cross_entropy` takes class ids or soft targets. A per-batch mean, so Trainer scales it for accumulation."""
    from transformers import Trainer

    class KitTrainer(Trainer):
        loss_is_scaled_for_ga = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = logits_of(model, inputs["pixel_values"])
            loss = cross_entropy(logits, inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    return KitTrainer


def history_callback(progress: bool = True):
    """A TrainerCallback that collects a `History` (one row per epoch) from Trainer's logs and evaluations,
    and shows the kit's progress bar over the epochs."""
    from transformers import TrainerCallback

    class HistoryCallback(TrainerCallback):
        def __init__(self):
            self.history, self.pending, self.started, self.bar = History(), {}, time.perf_counter(), None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar(total=round(args.num_train_epochs), desc="Trainer epochs", disable=not progress)

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.pending = {"train_loss": logs["loss"], "lr": logs.get("learning_rate", float("nan"))}

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.history.rows.append(dict(
                epoch=round(state.epoch), train_loss=self.pending.get("train_loss", float("nan")),
                val_loss=metrics["eval_loss"], val_accuracy=metrics["eval_accuracy"],
                lr=self.pending.get("lr", float("nan")), seconds=time.perf_counter() - self.started,
            ))
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return HistoryCallback()


def accuracy_metric(prediction) -> dict:
    """Trainer's `compute_metrics`: accuracy of the argmax of the logits."""
    return {"accuracy": float((np.asarray(prediction.predictions).argmax(-1) == prediction.label_ids).mean())}


def fit_with_trainer(model: torch.nn.Module, train_set, val_set, settings: Settings, output_dir: str | os.PathLike,
                     *, progress: bool = True, **overrides) -> History:
    """The same fine-tune as `fit()` through `transformers.Trainer`; returns a `History` to compare.

    Same settings, the kit's AdamW groups, warmup + cosine schedule, clipping, accumulation and
    loss; Trainer evaluates every epoch (`eval_strategy="epoch"`) and runs on the CPU when there
    is no GPU (`use_cpu`). Only the shuffling order differs (Trainer draws its own from the seed).
    Trainer's own progress display (an HTML table of the epochs in a notebook) is off: the History
    returned holds the same numbers, and `progress` shows the kit's bar over the epochs.
    """
    from transformers import PrinterCallback, TrainingArguments

    settings = dataclasses.replace(settings, **overrides)
    precision = mixed_precision_for(settings)[0]
    arguments = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm or 0.0,
        eval_strategy="epoch", logging_strategy="epoch", save_strategy="no", use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16", fp16=precision == "fp16", seed=settings.seed,
        dataloader_num_workers=settings.num_workers, remove_unused_columns=False, label_names=["labels"],
        report_to="none", disable_tqdm=True,
    )
    optimizer = make_optimizer("adamw", parameter_groups(model, settings.weight_decay), settings.lr)
    steps = run_steps(len(train_set), settings, arguments.world_size)
    scheduler = make_scheduler(optimizer, "warmup_cosine", steps.warmup, steps.total)
    callback = history_callback(progress)
    trainer = make_kit_trainer_class()(
        model=model, args=arguments, train_dataset=train_set, eval_dataset=val_set,
        data_collator=collate_for_trainer, compute_metrics=accuracy_metric, optimizers=(optimizer, scheduler),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm, Trainer would print every log as a dict
    trainer.train()
    model.eval()
    return callback.history


def compare_histories(histories: dict[str, History], metric: str = "val_accuracy"):
    """One line per run of `metric` against epoch (a pyplot Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name, history in histories.items():
        ax.plot(history.column("epoch"), history.column(metric), marker="o", label=name)
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=metric.replace("_", " "))
    ax.legend()
    fig.tight_layout()
    return fig


def side_by_side(histories: dict[str, History], metric: str = "val_accuracy") -> str:
    """A markdown table of `metric` per epoch, one column per run."""
    epochs = sorted({row["epoch"] for history in histories.values() for row in history.rows})
    lines = ["| epoch | " + " | ".join(histories) + " |", "|---|" + "---|" * len(histories)]
    for epoch in epochs:
        cells = [next((f"{r[metric]:.4f}" for r in h.rows if r["epoch"] == epoch), "-") for h in histories.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DISTRIBUTED_DEMO = "helpers.lessons.l05_distributed_demo"


def torchrun_command(module: str, arguments: list[str], nproc_per_node: int = 2) -> list[str]:
    """The command that starts `python -m module arguments` in `nproc_per_node` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc_per_node),
            "-m", module, *arguments]


def run_distributed_demo(out_dir: str | os.PathLike, nproc_per_node: int = 2, train_size: int = 128,
                         timeout: float = 600) -> list[dict]:
    """Run `helpers.lessons.l05_distributed_demo` (fit() on the tiny ViT) under torchrun; return each rank's report.

    Each report holds rank, world_size, the weights' checksum before and after training, val_accuracy
    and sample_indices (the training images the rank read). Every rank must end with the same weights,
    and the ranks must share the epoch's images out between them, for data-parallel training to be right.
    With fewer GPUs than processes the processes run on the CPU (gloo), as two cannot share one GPU.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    command = torchrun_command(DISTRIBUTED_DEMO, ["--out", out_dir.name, "--train-size", str(train_size)],
                               nproc_per_node)  # run inside out_dir's parent: the command shown is the same anywhere
    print("$ " + shlex.join(["python", *command[1:]]), flush=True)
    package_root = str(Path(__file__).resolve().parents[2])  # this copy of helpers, whatever the working folder
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                   "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    if torch.cuda.device_count() < nproc_per_node:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                              cwd=out_dir.parent)
    if finished.returncode != 0:
        raise RuntimeError(f"torchrun failed with exit code {finished.returncode}:\n{finished.stderr[-2000:]}")
    return [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(nproc_per_node)]


@dataclass
class LRFinderResult:
    """Loss against learning rate from `lr_find`: raw, and smoothed with an exponential moving average."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]

    @property
    def lr_at_min(self) -> float:
        """The learning rate where the smoothed loss is lowest: past it, training becomes unstable."""
        return self.lrs[int(np.argmin(self.smoothed))]

    @property
    def suggestion(self) -> float:
        """One tenth of `lr_at_min`: still on the steep, falling part of the curve, safely below divergence."""
        return self.lr_at_min / 10

    def plot(self):
        """Loss against lr on a log axis, with the minimum and the suggestion marked (a pyplot Figure)."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        ax.plot(self.lrs, self.losses, color="C0", alpha=0.3, label="loss per step")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        ax.axvline(self.lr_at_min, color="C3", linestyle=":", label=f"minimum at {self.lr_at_min:.1e}")
        ax.axvline(self.suggestion, color="C2", linestyle="--", label=f"suggestion {self.suggestion:.1e}")
        low, high = min(self.smoothed), self.smoothed[0]
        ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
               ylim=(low - 0.1 * (high - low + 1e-3), high + 0.6 * (high - low + 1e-3)),
               title="learning-rate range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def lr_find(
    model: torch.nn.Module,
    train_set,
    settings: Settings,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    optimizer: torch.optim.Optimizer | str = "adamw",
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    batch_transform=None,
    progress: bool = True,
    **overrides,
) -> LRFinderResult:
    """The learning-rate range test (Smith 2017): train `num_steps` steps while the lr grows
    geometrically from `start_lr` to `end_lr`, recording the loss; stop early once the loss diverges.

    `optimizer` is a name from `OPTIMIZERS` (a fresh one over the default groups) or your own
    optimizer; every group is set to the swept lr. Afterwards the model's weights and train/eval
    modes, the optimizer's state and learning rates and the random number generators are exactly
    as they were before: the test changes nothing but where the model lives (its device) and, on
    a GPU, the autocast that Accelerate wraps around its forward (as `fit()` does too).
    """
    settings = dataclasses.replace(settings, **overrides)
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr, got start_lr={start_lr} and end_lr={end_lr}.")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 to draw a curve, got {num_steps}.")
    if len(train_set) == 0:
        raise ValueError("The training set must hold at least one image.")
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, parameter_groups(model, settings.weight_decay), start_lr)
    with left_as_it_was(model, optimizer):
        return sweep_learning_rates(model, train_set, settings, optimizer, start_lr, end_lr, num_steps, smoothing,
                                    diverge_factor, batch_transform, progress)


def sweep_learning_rates(model, train_set, settings, optimizer, start_lr, end_lr, num_steps, smoothing,
                         diverge_factor, batch_transform, progress) -> LRFinderResult:
    """The loop of `lr_find`, without the restoring: one `train_step` per lr, batches drawn in a seeded order."""
    accelerator = make_accelerator(dataclasses.replace(settings, grad_accum=1))
    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = loader_for(train_set, settings.batch_size, shuffle_generator=generator, num_workers=settings.num_workers)
    prepared_model, prepared_optimizer, loader = accelerator.prepare(model, optimizer, loader)
    prepared_model.train()
    result = LRFinderResult([], [], [])
    average, batches = 0.0, iter(loader)
    for step in progress_bar(range(num_steps), desc="lr range test", leave=False, disable=not progress):
        lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        loss = float(train_step(prepared_model, images, targets, prepared_optimizer, None, accelerator,
                                settings.max_grad_norm, batch_transform))
        if not math.isfinite(loss):
            break
        average = smoothing * average + (1 - smoothing) * loss
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(average / (1 - smoothing ** (step + 1)))
        if step > 0 and result.smoothed[-1] > diverge_factor * min(result.smoothed):
            break
    if len(result.lrs) < 2:
        raise RuntimeError(f"The loss diverged at once (lr {start_lr:g}): lower start_lr.")
    return result
