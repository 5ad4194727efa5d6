"""Lesson 02's companion: recipes (a strategy plus how it trains), the strategy comparison,
memory measurements, a pixel baseline and the checkers of its exercises.

`run_recipe` trains one recipe on a fresh model and measures it (`RunResult`);
`compare_strategies` runs several and `results_table` / `plot_comparison` show them.
"""
from __future__ import annotations

import ctypes
import math
import numbers
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from helpers.course.checks import checker
from helpers.data.loaders import make_loader
from helpers.evaluate.metrics import noise_threshold
from helpers.freezing import (
    DEFAULT_LR_DECAY,
    add_lora,
    assert_unchanged,
    bitfit,
    count_parameters,
    depth_of,
    freeze_first_blocks,
    full_finetune,
    gradual_unfreezing_stages,
    layer_id,
    layer_name,
    linear_probe,
    llrd_param_groups,
    snapshot,
    trainable_names,
)
from helpers.profiles import Settings
from helpers.progress import progress_bar
from helpers.train.device_images import default_device
from helpers.train.history import History
from helpers.train.loop import fit, seed_everything
from helpers.train.speed import saved_for_backward_bytes


def plot_trainable_map(shares: dict[str, dict[str, float]]) -> Figure:
    """Heat map of `trainable_share_by_layer` per strategy: rows strategies, columns layers."""
    strategies, layers = list(shares), list(next(iter(shares.values())))
    grid = np.array([[shares[strategy][layer] for layer in layers] for strategy in strategies])
    fig = Figure(figsize=(1.0 + 0.75 * len(layers), 0.9 + 0.38 * len(strategies)))
    ax = fig.subplots()
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_yticks(range(len(strategies)), strategies)
    for (row, column), share in np.ndenumerate(grid):
        ax.text(column, row, f"{share:.0%}", ha="center", va="center", fontsize=7,
                color="white" if share > 0.6 else "black")
    ax.set_title("share of each layer's parameters that train (input on the left)", fontsize=9)
    fig.tight_layout()
    return fig


def _resident_bytes() -> int:
    """Resident memory of this process (Linux: /proc; elsewhere psutil, which Jupyter installs)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return psutil.Process().memory_info().rss


def _release_freed_memory() -> None:
    """Hand memory that the C allocator holds but no longer uses back to the system (Linux glibc)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory above the level at entry, in MB, while the `with` block runs (`.mb` after it).

    On a CUDA GPU it is the allocator's peak (`torch.cuda.max_memory_allocated`); on a CPU it is
    the peak resident memory of the process (RSS), sampled every `interval` seconds by a thread,
    after freed memory is handed back so that the starting level is what is in use. `.method` says
    which. The RSS peak counts what the allocator holds, so it is noisier and a little larger than
    what the tensors need.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.on_gpu = torch.cuda.is_available()
        self.method = "CUDA max_memory_allocated" if self.on_gpu else "process RSS peak (sampled)"
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        _release_freed_memory()
        self._start = self._peak = _resident_bytes()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _resident_bytes())

    def __exit__(self, *exc) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, _resident_bytes())
        self.mb = (peak - self._start) / 2**20


def activation_mb_per_image(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """MB of activations autograd keeps for the backward pass, per image, for one training step.

    Counted exactly by `helpers.train.saved_for_backward_bytes` (each storage once, weights left
    out) in float32 without autocast. Frozen layers below the lowest trainable one keep none.
    """
    device, was_training = next(model.parameters()).device, model.training
    model.train()
    saved = saved_for_backward_bytes(model, images.to(device), labels.to(device))
    model.train(was_training)
    return saved / 2**20 / len(images)


def split_epochs(epochs: int, parts: int) -> list[int]:
    """`epochs` shared out over `parts` stages as evenly as possible, the later stages getting the rest."""
    if epochs < parts:
        raise ValueError(f"{epochs} epoch(s) cannot be split over {parts} stages: give at least one epoch per stage.")
    return [epochs // parts + (stage >= parts - epochs % parts) for stage in range(parts)]


@dataclass(frozen=True)
class Recipe:
    """One way to fine-tune: which parameters train (`prepare`) and how they are trained.

    `prepare(model)` sets `requires_grad` (or wraps the model, as LoRA does) and returns the model
    to train. Training uses the settings' lr times `lr_scale`; with `llrd_decay` the optimizer gets
    layer-wise decayed groups; with `unfreeze_stages >= 2` the epochs are split over gradual
    unfreezing stages (head first; fewer stages when there are fewer epochs, never under two), each
    with a fresh optimizer and layer-wise decayed groups.
    """

    name: str
    prepare: Callable[[nn.Module], nn.Module]
    lr_scale: float = 1.0
    llrd_decay: float | None = None
    unfreeze_stages: int = 0

    def train(self, model: nn.Module, train_set, val_set, settings: Settings, progress: bool = True) -> History:
        """Train the prepared `model` for `settings.epochs` epochs in all; return one History."""
        lr = settings.lr * self.lr_scale
        if self.unfreeze_stages:
            return self._train_gradually(model, train_set, val_set, settings, lr, progress)
        groups = llrd_param_groups(model, lr, self.llrd_decay, settings.weight_decay) if self.llrd_decay else None
        return fit(model, train_set, val_set, settings, param_groups=groups, lr=lr, progress=progress)

    def _train_gradually(self, model, train_set, val_set, settings, lr, progress) -> History:
        decay = self.llrd_decay or DEFAULT_LR_DECAY
        n_stages = max(2, min(self.unfreeze_stages, settings.epochs))
        stages = gradual_unfreezing_stages(model, n_stages, lr, decay, settings.weight_decay)
        history = History()
        for stage, epochs in zip(stages, split_epochs(settings.epochs, len(stages)), strict=True):
            part = fit(model, train_set, val_set, settings, param_groups=stage.apply(model), lr=lr, epochs=epochs,
                       progress=progress)
            history.rows += [{**row, "epoch": len(history) + 1 + i} for i, row in enumerate(part.rows)]
        return history


def default_recipes(depth: int, frozen_blocks: int | None = None, lora_rank: int = 8) -> list[Recipe]:
    """The lesson's seven strategies for a model with `depth` blocks (frozen_blocks default: depth // 2).

    Strategies that train few parameters (linear probe, BitFit, LoRA) take a 10x larger step,
    as is usual for them; the others train at the settings' lr.
    """
    k = depth // 2 if frozen_blocks is None else frozen_blocks
    return [
        Recipe("linear probe", _prepared(linear_probe), lr_scale=10),
        Recipe(f"freeze emb + {k} blocks", _prepared(freeze_first_blocks, k=k)),
        Recipe("BitFit", _prepared(bitfit), lr_scale=10),
        Recipe("full fine-tune", _prepared(full_finetune)),
        Recipe(f"full + LLRD {DEFAULT_LR_DECAY}", _prepared(full_finetune), llrd_decay=DEFAULT_LR_DECAY),
        Recipe("gradual unfreezing", _prepared(freeze_first_blocks, k=depth), unfreeze_stages=3),
        Recipe(f"LoRA r={lora_rank}", partial(add_lora, r=lora_rank, alpha=2 * lora_rank), lr_scale=10),
    ]


def _prepared(strategy: Callable[..., list[str]], **kwargs) -> Callable[[nn.Module], nn.Module]:
    """A `Recipe.prepare` that applies `strategy` and returns the model itself."""

    def prepare(model: nn.Module) -> nn.Module:
        strategy(model, **kwargs)
        return model

    return prepare


@dataclass
class RunResult:
    """What one recipe cost and reached (trainable parameters and activations measured after training,
    so at the widest point of gradual unfreezing)."""

    strategy: str
    backbone: str
    trainable: int
    total: int
    seconds_per_epoch: float  # wall clock, training and validation: the median over the epochs
    cpu_seconds_per_epoch: float  # this process's CPU time, all threads: steadier than wall on a shared machine
    peak_memory_mb: float
    activation_mb_per_image: float
    val_accuracy: float
    frozen_tensors_checked: int
    history: History
    model: nn.Module  # the trained model, on the CPU

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def run_recipe(
    recipe: Recipe, load: Callable[[], nn.Module], train_set, val_set, settings: Settings,
    backbone: str = "pretrained", progress: bool = True,
) -> RunResult:
    """Train `recipe` on a fresh model from `load()` and measure it.

    The model is loaded after seeding with `settings.seed`, so every recipe starts from the same
    head. Before training, every frozen parameter is copied; after it, each one that is still frozen
    (gradual unfreezing thaws some on the way) must be bit-identical (AssertionError otherwise).
    Validation accuracy is the last epoch's.
    """
    seed_everything(settings.seed)
    model = recipe.prepare(load()).to(default_device())
    frozen = snapshot(model)
    cpu_started = time.process_time()
    with PeakMemory() as memory:
        history = recipe.train(model, train_set, val_set, settings, progress)
    cpu_seconds = time.process_time() - cpu_started
    thawed = set(trainable_names(model))
    still_frozen = {name: value for name, value in frozen.items() if name not in thawed}
    assert_unchanged(model, still_frozen)
    images, labels = next(iter(make_loader(train_set, min(settings.batch_size, 16))))
    activation = activation_mb_per_image(model, images, labels)
    count = count_parameters(model)
    return RunResult(
        strategy=recipe.name,
        backbone=backbone,
        trainable=count.trainable,
        total=count.total,
        seconds_per_epoch=float(np.median(history.column("seconds"))),
        cpu_seconds_per_epoch=cpu_seconds / len(history),
        peak_memory_mb=memory.mb,
        activation_mb_per_image=activation,
        val_accuracy=history.rows[-1]["val_accuracy"],
        frozen_tensors_checked=len(still_frozen),
        history=history,
        model=model.cpu(),
    )


def compare_strategies(
    recipes: list[Recipe], load: Callable[[], nn.Module], train_set, val_set, settings: Settings,
    backbone: str = "pretrained",
) -> list[RunResult]:
    """`run_recipe` for each recipe with the same settings (an equal budget); one progress bar."""
    results = []
    for recipe in progress_bar(recipes, desc=f"strategies ({backbone})"):
        results.append(run_recipe(recipe, load, train_set, val_set, settings, backbone, progress=False))
    return results


def results_table(results: list[RunResult], baselines: dict[str, float] | None = None,
                  val_images: int | None = None) -> str:
    """A markdown table of the results, then one row per baseline (name -> validation accuracy).

    With `val_images`, a last column gives each strategy's gap to full fine-tuning on the same backbone and
    whether the noise rule (`evaluate.noise_threshold`) reads it as real or within the noise.
    """
    full = {r.backbone: r.val_accuracy for r in results if r.strategy == "full fine-tune"}
    lines = [
        "| strategy | backbone | trainable | trainable % | s / epoch | CPU s / epoch | peak memory MB "
        "| activations MB / image | val accuracy |" + (" vs full fine-tune |" if val_images else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if val_images else ""),
    ]
    for r in results:
        line = (f"| {r.strategy} | {r.backbone} | {r.trainable:,} | {r.trainable_percent:.2f} "
                f"| {r.seconds_per_epoch:.2f} | {r.cpu_seconds_per_epoch:.2f} | {r.peak_memory_mb:.0f} "
                f"| {r.activation_mb_per_image:.3f} | {r.val_accuracy:.1%} |")
        if val_images:
            reference = None if r.strategy == "full fine-tune" else full.get(r.backbone)
            line += f" {gap_to(r.val_accuracy, reference, val_images)} |"
        lines.append(line)
    lines += [f"| {name} | control | | | | | | | {accuracy:.1%} |" + (" |" if val_images else "")
              for name, accuracy in (baselines or {}).items()]
    return "\n".join(lines)


def gap_to(accuracy: float, reference: float | None, n_images: int) -> str:
    """'+1.2 pt, within noise' or '-9.3 pt, real': `accuracy` against `reference` under the noise rule."""
    if reference is None:
        return "-"
    gap = accuracy - reference
    real = abs(gap) > noise_threshold((accuracy + reference) / 2, n_images)
    return f"{100 * gap:+.1f} pt, {'real' if real else 'within noise'}"


def plot_comparison(results: list[RunResult], baselines: dict[str, float] | None = None,
                    val_images: int | None = None) -> Figure:
    """Validation accuracy per strategy, pretrained beside random init, with baselines as lines; and s/epoch.

    With `val_images`, a grey band marks full fine-tuning (first backbone) ± the noise rule: bars inside it
    cannot be told apart from it."""
    strategies = list(dict.fromkeys(r.strategy for r in results))
    backbones = list(dict.fromkeys(r.backbone for r in results))
    by_key = {(r.strategy, r.backbone): r for r in results}
    fig = Figure(figsize=(10, 4.2))
    ax_acc, ax_time = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(backbones)
    positions = np.arange(len(strategies))
    for i, backbone in enumerate(backbones):
        values = [by_key[(s, backbone)].val_accuracy if (s, backbone) in by_key else np.nan for s in strategies]
        bars = ax_acc.bar(positions + (i - (len(backbones) - 1) / 2) * width, values, width, label=backbone)
        ax_acc.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0%}" for v in values], fontsize=6)
    for j, (name, accuracy) in enumerate((baselines or {}).items()):
        ax_acc.axhline(accuracy, color=f"C{len(backbones) + j}", linestyle="--", linewidth=1, label=name)
    full = by_key.get(("full fine-tune", backbones[0]))
    if val_images and full is not None:
        band = noise_threshold(full.val_accuracy, val_images)
        ax_acc.axhspan(full.val_accuracy - band, full.val_accuracy + band, color="grey", alpha=0.2,
                       label=f"full fine-tune ± noise rule ({100 * band:.1f} pt)")
    ax_acc.set_xticks(positions, strategies, rotation=30, ha="right", fontsize=8)
    ax_acc.set(ylabel="validation accuracy", ylim=(0, 1.05), title="accuracy at an equal budget")
    ax_acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=2, frameon=False)
    pretrained = [by_key[(s, backbones[0])] for s in strategies if (s, backbones[0]) in by_key]
    ax_time.barh([r.strategy for r in pretrained], [r.seconds_per_epoch for r in pretrained], color="C7")
    ax_time.invert_yaxis()
    ax_time.tick_params(axis="y", labelsize=8)
    ax_time.set(xlabel="seconds per epoch", title=f"cost ({backbones[0]})")
    fig.tight_layout()
    return fig


def describe_regime(results: list[RunResult], pixel_accuracy: float, probe_accuracy: float) -> str:
    """One paragraph, from the measured numbers: is the frozen backbone a good feature extractor here?

    `probe_accuracy` is the best linear classifier on the frozen pretrained features, `pixel_accuracy`
    the same on raw pixels.
    """
    by_name = {(r.strategy, r.backbone): r.val_accuracy for r in results}
    full = by_name.get(("full fine-tune", "pretrained"))
    full_random = by_name.get(("full fine-tune", "random init"))
    if probe_accuracy > pixel_accuracy:
        regime = (f"Frozen features beat raw pixels ({probe_accuracy:.1%} vs {pixel_accuracy:.1%}): the pretrained "
                  "backbone already separates these classes, so cheap strategies that keep it frozen are competitive.")
    else:
        regime = (f"Raw pixels are as linearly separable as the frozen features or more ({pixel_accuracy:.1%} vs "
                  f"{probe_accuracy:.1%}): the pretrained features do not fit this task as they are, so the backbone "
                  "itself has to adapt; strategies that freeze most of it are capped.")
    if full is not None and full_random is not None:
        verdict = "Pretraining pays when the backbone trains" if full > full_random else "Pretraining did not help here"
        regime += (f" {verdict}: full fine-tuning reaches {full:.1%} from the checkpoint vs {full_random:.1%} from "
                   "random init at the same budget.")
    return regime


def pixel_matrix(dataset) -> np.ndarray:
    """Raw pixels of a `helpers.data` dataset, one flattened row per image in [0, 1] (native size, no transform)."""
    return np.stack([dataset.image(i).numpy().reshape(-1) for i in range(len(dataset))]).astype(np.float32) / 255


def logistic_regression_accuracy(train_x, train_y, val_x, val_y, max_iter: int = 1000) -> float:
    """Validation accuracy of a standardised multinomial logistic regression (scikit-learn, L-BFGS)."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    classifier.fit(np.asarray(train_x), np.asarray(train_y))
    return float(classifier.score(np.asarray(val_x), np.asarray(val_y)))


@checker
def check_last_two_blocks(model: nn.Module, trainable_percent: float) -> None:
    """Checker: only the last two encoder blocks and the head train, and `trainable_percent` says how much."""
    depth = depth_of(model)
    should_train = {name: layer_id(name, depth) >= depth - 1 for name, _ in model.named_parameters()}
    params = dict(model.named_parameters())
    frozen_wrongly = [name for name, param in params.items() if should_train[name] and not param.requires_grad]
    training_wrongly = [name for name, param in params.items() if param.requires_grad and not should_train[name]]
    assert not frozen_wrongly, (
        f"{len(frozen_wrongly)} parameters are frozen but should train, e.g. {frozen_wrongly[0]}: train blocks "
        f"{depth - 2} and {depth - 1}, the final layernorm and the classifier."
    )
    assert not training_wrongly, (
        f"{len(training_wrongly)} parameters train but should be frozen, e.g. {training_wrongly[0]}: freeze the "
        f"embeddings and blocks 0 to {depth - 3}."
    )
    assert isinstance(trainable_percent, numbers.Real) and not isinstance(trainable_percent, bool), (
        f"Set trainable_percent to a number, not {type(trainable_percent).__name__}."
    )
    count = count_parameters(model)
    assert not math.isclose(trainable_percent, count.percent / 100, rel_tol=1e-3), (
        "That is a fraction: give trainable_percent in percent (multiply by 100)."
    )
    assert abs(trainable_percent - count.percent) < 0.01, (
        f"trainable_percent={trainable_percent:.2f} is not the share that trains: divide the trainable count by the "
        "total count and multiply by 100."
    )
    print(f"Correct: the last two blocks and the head train, {count.percent:.2f}% of the parameters.")


@checker
def check_llrd_groups(groups: list[dict], model: nn.Module, lr: float, decay: float) -> None:
    """Checker: each trainable parameter in exactly one group, at lr * decay ** (its depth from the top)."""
    depth = depth_of(model)
    assert isinstance(groups, (list, tuple)) and all(
        isinstance(group, dict) and "params" in group and "lr" in group for group in groups
    ), "Give a list of dicts, each with 'params' (a list of parameters) and 'lr'."
    names = {id(param): name for name, param in model.named_parameters()}
    seen = [id(param) for group in groups for param in group["params"]]
    assert all(key in names for key in seen), (
        "A group holds something that is not one of this model's parameters: put the tensors from "
        "model.named_parameters() in the groups, not their names or copies."
    )
    trainable = {id(param) for param in model.parameters() if param.requires_grad}
    assert len(seen) == len(set(seen)), "A parameter sits in two groups: put each one in exactly one group."
    left_out = [names[key] for key in trainable - set(seen)]
    frozen_in = [names[key] for key in set(seen) - trainable]
    assert not left_out, f"{len(left_out)} trainable parameters are in no group, e.g. {left_out[0]}: give each a group."
    assert not frozen_in, f"{len(frozen_in)} frozen parameters are in a group, e.g. {frozen_in[0]}: leave them out."
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            layer = layer_id(name, depth)
            assert math.isclose(group["lr"], lr * decay ** (depth + 1 - layer), rel_tol=1e-6), (
                f"{name} ({layer_name(layer, depth)}) trains at lr {group['lr']:.3g}, which is not lr * decay ** "
                f"(its depth from the top), where the head is 0 layers down and the embeddings {depth + 1}."
            )
    print(f"Correct: {len(groups)} groups, from {max(g['lr'] for g in groups):.2g} at the head down to "
          f"{min(g['lr'] for g in groups):.2g}.")


@checker
def check_bitfit_by_hand(model: nn.Module) -> None:
    """Checker: BitFit proper, set with a `named_parameters()` loop: every bias and the classifier train, nothing
    else (in particular no LayerNorm gain, which scales rather than shifts)."""
    trains = {name for name, param in model.named_parameters() if param.requires_grad}
    wanted = {name for name, _ in model.named_parameters() if name.endswith(".bias") or name.startswith("classifier.")}
    gains = {name for name in trains - wanted if "norm" in name.lower()}
    others = trains - wanted - gains
    assert not others, (f"{len(others)} parameters train that are neither a bias nor the classifier (e.g. "
                        f"{sorted(others)[0]}): freeze them.")
    assert not gains, (f"{len(gains)} LayerNorm gains train (e.g. {sorted(gains)[0]}): a gain multiplies, it is not a "
                       "bias; BitFit proper trains only the additive terms.")
    missing = wanted - trains
    assert not any(name.startswith("classifier.") for name in missing), (
        "The new classifier must train: it starts from random numbers.")
    assert not missing, (f"{len(missing)} biases are still frozen (e.g. {sorted(missing)[0]}): every bias trains, "
                         "in attention, the MLP and the LayerNorms alike.")
    count = count_parameters(model)
    print(f"Correct: {len(trains)} tensors, {count.trainable:,} parameters ({count.percent:.2f}%) train: every bias "
          "and the classifier.")
