"""Which parameters train (lesson 02): freezing strategies, layer-wise lr decay, gradual unfreezing, LoRA,
and the cached-feature linear probe.

Everything here works on a transformers `ViTForImageClassification`. Its parameters fall into
"layers" counted from the input (see `layer_id`):

    0            embeddings (CLS token, position embeddings, patch projection)
    1 .. depth   encoder blocks 0 .. depth-1 (`vit.layers.<i>.*`)
    depth + 1    head (final layernorm and classifier)

A strategy sets `requires_grad` on every parameter and returns the names of the trainable ones.
"""
from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.data import Dataset
from transformers import ViTForImageClassification

from helpers._moved import forwarder
from helpers.data.loaders import make_loader
from helpers.profiles import Settings
from helpers.progress import progress_bar
from helpers.train.device_images import default_device
from helpers.train.history import History
from helpers.train.loop import fit
from helpers.train.optim import is_no_decay

# Query and value projections of `ViTAttention` in the installed transformers (modeling_vit.py).
LORA_TARGET_MODULES = ["q_proj", "v_proj"]


DEFAULT_LR_DECAY = 0.75


_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.")


@dataclass(frozen=True)
class ParameterCount:
    """How many parameters a model has and how many of them train (lesson 02)."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({self.percent:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters (each shared tensor once) (lesson 02)."""
    params = list(model.parameters())
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters with `requires_grad`, in model order (lesson 02)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def depth_of(model: nn.Module) -> int:
    """Number of encoder blocks (lesson 02)."""
    return model.config.num_hidden_layers


def layer_id(name: str, depth: int) -> int:
    """Layer of a parameter: 0 for embeddings, i + 1 for encoder block i, depth + 1 for the head (lesson 02)."""
    if block := _BLOCK.search(name):
        return int(block.group(1)) + 1
    if _EMBEDDINGS.search(name):
        return 0
    return depth + 1


def layer_name(layer: int, depth: int) -> str:
    """Readable name of a `layer_id`: "embeddings", "block 3" or "head" (lesson 02)."""
    if layer == 0:
        return "embeddings"
    if layer == depth + 1:
        return "head"
    return f"block {layer - 1}"


def _train_only(model: nn.Module, trains: Callable[[str], bool]) -> list[str]:
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    return trainable_names(model)


def linear_probe(model: nn.Module) -> list[str]:
    """Train the classifier only; the backbone is a frozen feature extractor (lesson 02)."""
    return _train_only(model, lambda name: name.startswith("classifier."))


def freeze_first_blocks(model: nn.Module, k: int) -> list[str]:
    """Freeze the embeddings and the first `k` encoder blocks; train the rest (0 <= k <= depth) (lesson 02)."""
    depth = depth_of(model)
    if not 0 <= k <= depth:
        raise ValueError(
            f"k={k} is out of range: this model has {depth} encoder blocks, so choose k from 0 to {depth}."
        )
    return _train_only(model, lambda name: layer_id(name, depth) > k)


def bitfit(model: nn.Module) -> list[str]:
    """Train the biases, the LayerNorm parameters and the classifier (BitFit) (lesson 02)."""
    layernorm_params = {
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    return _train_only(
        model,
        lambda name: name.endswith(".bias") or name in layernorm_params or name.startswith("classifier."),
    )


def full_finetune(model: nn.Module) -> list[str]:
    """Train every parameter (lesson 02)."""
    return _train_only(model, lambda name: True)


STRATEGIES: dict[str, Callable[..., list[str]]] = {
    "linear_probe": linear_probe,
    "freeze_first_blocks": freeze_first_blocks,
    "bitfit": bitfit,
    "full_finetune": full_finetune,
}


def apply_strategy(model: nn.Module, name: str, **kwargs) -> list[str]:
    """Apply the strategy `name` from `STRATEGIES` (extra keywords go to it); return the trainable names (lesson 02)."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown freezing strategy {name!r}: choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[name](model, **kwargs)


def llrd_param_groups(
    model: nn.Module, lr: float, decay: float = DEFAULT_LR_DECAY, weight_decay: float = 0.05
) -> list[dict]:
    """Optimizer groups with layer-wise LR decay, for the parameters that train (lesson 02).

    The head trains at `lr`, encoder block i at `lr * decay ** (depth - i)` and the embeddings at
    `lr * decay ** (depth + 1)`. Each layer is split in two groups: weight decay `weight_decay`, and
    0 for the parameters `helpers.train.is_no_decay` names. Groups run from head to embeddings (so
    the first group has the peak lr) and carry `name` (e.g. "block 3 (no decay)") and `names`
    (parameter names) for display.
    """
    if not 0 < decay <= 1:
        raise ValueError(
            f"decay={decay} must be in (0, 1]: each layer down trains at `decay` times the lr of the layer above."
        )
    depth = depth_of(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, no_decay = layer_id(name, depth), is_no_decay(name, param)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "name": layer_name(layer, depth) + (" (no decay)" if no_decay else ""),
                "names": [],
                "params": [],
                "lr": lr * decay ** (depth + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["names"].append(name)
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda key: (-key[0], key[1]))]


@dataclass(frozen=True)
class UnfreezeStage:
    """One stage of gradual unfreezing: layers `lowest_layer` .. head train, the rest is frozen (lesson 02)."""

    number: int
    lowest_layer: int
    depth: int
    lr: float
    lr_decay: float
    weight_decay: float

    def apply(self, model: nn.Module) -> list[dict]:
        """Set `requires_grad` for this stage and return its optimizer groups (layer-wise LR decay)."""
        _train_only(model, lambda name: layer_id(name, self.depth) >= self.lowest_layer)
        return llrd_param_groups(model, self.lr, self.lr_decay, self.weight_decay)

    def __str__(self) -> str:
        layers = [layer_name(layer, self.depth) for layer in range(self.lowest_layer, self.depth + 2)]
        return f"stage {self.number}: train {', '.join(reversed(layers))}"


def gradual_unfreezing_stages(
    model: nn.Module, n_stages: int, lr: float, lr_decay: float = DEFAULT_LR_DECAY, weight_decay: float = 0.05
) -> list[UnfreezeStage]:
    """Stages that unfreeze the model from the top (fastai style): head only first, everything last (lesson 02).

    The layers below the head are handed out as evenly as the stage count allows. Run each stage
    with a fresh optimizer, for example one epoch each:

        for stage in gradual_unfreezing_stages(model, n_stages=3, lr=1e-3):
            print(stage)
            history = fit(model, train_set, val_set, settings, param_groups=stage.apply(model), epochs=1)
    """
    depth = depth_of(model)
    if not 2 <= n_stages <= depth + 2:
        raise ValueError(
            f"n_stages={n_stages} is out of range: with {depth} encoder blocks choose from 2 (head, then all) "
            f"to {depth + 2} (one layer per stage)."
        )
    below_head = depth + 1
    return [
        UnfreezeStage(
            number=stage,
            lowest_layer=below_head - stage * below_head // (n_stages - 1),
            depth=depth,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
        )
        for stage in range(n_stages)
    ]


def add_lora(model: ViTForImageClassification, r: int = 8, alpha: int = 16, dropout: float = 0.0) -> PeftModel:
    """Wrap `model` with LoRA adapters on the attention query and value projections (lesson 02).

    Only the adapters and a trainable copy of the classifier train. The wrapped model is changed in place.
    """
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LORA_TARGET_MODULES,
        modules_to_save=["classifier"],
    )
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def merge_lora(peft_model: PeftModel) -> ViTForImageClassification:
    """Fold the LoRA updates into the weights and return a plain model (saves with `save_pretrained`) (lesson 02)."""
    return peft_model.merge_and_unload()


def snapshot(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Copy the named parameters (default: the frozen ones) to compare after training (lesson 02)."""
    params = dict(model.named_parameters())
    names = [name for name, param in params.items() if not param.requires_grad] if names is None else list(names)
    if unknown := [name for name in names if name not in params]:
        raise ValueError(f"The model has no parameters named {unknown}: take names from model.named_parameters().")
    return {name: params[name].detach().clone() for name in names}


def assert_unchanged(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Raise AssertionError naming every parameter that is not bit-identical to the snapshot (lesson 02)."""
    params = dict(model.named_parameters())
    changed = [name for name, value in saved.items() if not torch.equal(params[name].detach().cpu(), value.cpu())]
    assert not changed, f"{len(changed)} parameters changed since the snapshot: {changed}"


def optimizer_covers_only_trainable(optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
    """True when the optimizer holds exactly the model's trainable parameters: all of them, no frozen one (lesson 02)."""
    in_optimizer = {id(param) for group in optimizer.param_groups for param in group["params"]}
    trainable = {id(param) for param in model.parameters() if param.requires_grad}
    return in_optimizer == trainable


def parameters_by_layer(model: nn.Module) -> dict[str, ParameterCount]:
    """Trainable and total parameters of each layer, from "embeddings" through "block i" to "head" (lesson 02)."""
    depth = depth_of(model)
    trainable, total = [0] * (depth + 2), [0] * (depth + 2)
    for name, param in model.named_parameters():
        layer = layer_id(name, depth)
        total[layer] += param.numel()
        trainable[layer] += param.numel() if param.requires_grad else 0
    return {layer_name(layer, depth): ParameterCount(trainable[layer], total[layer]) for layer in range(depth + 2)}


def trainable_share_by_layer(model: nn.Module) -> dict[str, float]:
    """Share (0 to 1) of each layer's parameters that train, in `parameters_by_layer` order (lesson 02)."""
    return {layer: count.percent / 100 for layer, count in parameters_by_layer(model).items()}


class FeatureSet(Dataset):
    """Cached backbone features with their labels; items are (feature vector, label) like an image dataset (lesson 02)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[index], int(self.labels[index])


@torch.inference_mode()
def cache_features(
    model: ViTForImageClassification, dataset, batch_size: int = 256, progress: bool = True
) -> FeatureSet:
    """What the classifier sees for every image: the CLS token after the backbone's final layernorm (lesson 02)."""
    model.eval()
    device = next(model.parameters()).device
    features, labels = [], []
    for images, targets in progress_bar(make_loader(dataset, batch_size), desc="features", disable=not progress):
        features.append(model.vit(images.to(device)).last_hidden_state[:, 0].float().cpu())
        labels.append(torch.as_tensor(targets))
    return FeatureSet(torch.cat(features), torch.cat(labels))


@dataclass
class FastProbe:
    """A linear probe trained on cached features: the timings and the features (for other classifiers) (lesson 02)."""

    feature_seconds: float
    history: History
    train_features: FeatureSet
    val_features: FeatureSet

    @property
    def seconds(self) -> float:
        """Feature extraction plus every epoch of head training (validation included)."""
        return self.feature_seconds + sum(self.history.column("seconds"))


def fast_linear_probe(model: ViTForImageClassification, train_set, val_set, settings: Settings,
                      progress: bool = True, **overrides) -> FastProbe:
    """Compute the frozen backbone's features once, then train `model.classifier` on them with `fit` (lesson 02).

    With no dropout and no augmentation this is the same optimisation as a linear probe trained
    through the frozen model (same head, batches, optimizer and schedule), only without running the
    backbone every epoch. `overrides` go to `fit` (e.g. `lr=...`). The model's own head is trained;
    `progress` shows the feature pass (head epochs take a blink).
    """
    linear_probe(model.to(default_device()))
    started = time.perf_counter()
    train_features = cache_features(model, train_set, progress=progress)
    val_features = cache_features(model, val_set, progress=progress)
    feature_seconds = time.perf_counter() - started
    history = fit(model.classifier, train_features, val_features, settings, progress=False, **overrides)
    return FastProbe(feature_seconds, history, train_features, val_features)


__getattr__ = forwarder(__name__)  # names that moved to the lesson companion
