"""Lesson 01's companion: a Vision Transformer written from scratch, attention tools and checkers.

Every part of the model is a few lines of plain PyTorch: patch embedding, attention, multi-head attention,
MLP, pre-norm encoder block and the full classifier. `ScratchViT.from_transformers` copies the weights of a
transformers `ViTForImageClassification`, so the lesson can show that this short code computes the same logits.
`TRANSFORMERS_NAMES` says where each part lives in transformers, to read its implementation side by side.
Also: the parameter budget of the standard ViT sizes with its figures, the lesson's experiments (accuracy
at other resolutions, a small CNN baseline), position-embedding similarity, the attention explorer, and
the checkers of its exercises.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from functools import lru_cache, partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from helpers import widgets
from helpers.attention import attention_map, model_attentions, overlay
from helpers.course.checks import answer_of, checker
from helpers.data.transforms import ImageSpec
from helpers.models import as_pair, attention_flops, grid_size, mlp_flops, sequence_length
from helpers.plots import as_displayable


def position_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between the position embeddings of every pair of patches: [rows, cols, rows, cols].

    `model` is a transformers ViT or a ScratchViT (anything with a `config` and a `position_embeddings`
    parameter); entry [i, j] is the map of how similar patch (i, j)'s embedding is to every other patch's,
    as in Fig. 7 of the ViT paper.
    """
    found = [param for name, param in model.named_parameters() if name.endswith("position_embeddings")]
    if len(found) != 1 or not hasattr(model, "config"):
        raise ValueError(
            f"{type(model).__name__} has no single position_embeddings parameter and config; "
            "pass a transformers ViT or a ScratchViT."
        )
    rows, cols = grid_size(model.config.image_size, model.config.patch_size)
    patches = found[0].detach().float().cpu()[0, 1:]  # drop the CLS entry
    normed = F.normalize(patches, dim=-1)
    return (normed @ normed.T).reshape(rows, cols, rows, cols)


def similarity_by_relation(similarity: torch.Tensor) -> dict[str, float]:
    """Mean of a `position_similarity` [rows, cols, rows, cols] over pairs of distinct patches, by how they relate.

    Relations: 4-neighbours, same row, same column, left-right mirror images (same row, columns c and
    cols-1-c), top-bottom mirror images, and all pairs. A relation with no pair on this grid gives nan.
    """
    rows, cols = similarity.shape[:2]
    r1, c1, r2, c2 = torch.meshgrid(*(torch.arange(n) for n in (rows, cols, rows, cols)), indexing="ij")
    distinct = (r1 != r2) | (c1 != c2)
    relations = {
        "neighbours": (r1 - r2).abs() + (c1 - c2).abs() == 1,
        "same row": (r1 == r2) & distinct,
        "same column": (c1 == c2) & distinct,
        "left-right mirror": (r1 == r2) & (c2 == cols - 1 - c1) & distinct,
        "top-bottom mirror": (c1 == c2) & (r2 == rows - 1 - r1) & distinct,
        "all pairs": distinct,
    }
    return {name: similarity[mask].float().mean().item() for name, mask in relations.items()}


def plot_attention_maps(image: torch.Tensor, maps: torch.Tensor, titles: Sequence[str] | None = None,
                        ncols: int = 5, alpha: float = 0.5) -> Figure:
    """The image, then each map of `maps` ([n, rows, cols] or [rows, cols]) overlaid on it."""
    maps = maps[None] if maps.ndim == 2 else maps
    titles = list(titles) if titles is not None else [f"head {i}" for i in range(len(maps))]
    if len(titles) != len(maps):
        raise ValueError(f"Got {len(titles)} titles for {len(maps)} maps; pass one title per map.")
    panels = len(maps) + 1
    ncols = min(ncols, panels)
    nrows = math.ceil(panels / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(as_displayable(image))
    axes.flat[0].set_title("image")
    for ax, heatmap, title in zip(axes.flat[1:], maps, titles):
        ax.imshow(overlay(image, heatmap, alpha))
        ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_position_similarity(similarity: torch.Tensor, cmap: str = "viridis") -> Figure:
    """ViT paper Fig. 7: for each patch (tile), the cosine similarity of its position embedding to all others."""
    rows, cols = similarity.shape[:2]
    padded = F.pad(similarity, (0, 1, 0, 1), value=float("nan"))  # a blank line between tiles
    mosaic = padded.permute(0, 2, 1, 3).reshape(rows * (rows + 1), cols * (cols + 1))
    figure, ax = plt.subplots(figsize=(5, 5 * rows / cols))
    shown = ax.imshow(mosaic.numpy(), cmap=cmap, vmin=-1, vmax=1)
    ax.set(title="Position embedding similarity", xlabel="input patch column", ylabel="input patch row")
    ax.set_xticks([(cols + 1) * c + cols / 2 for c in range(cols)], [str(c + 1) for c in range(cols)])
    ax.set_yticks([(rows + 1) * r + rows / 2 for r in range(rows)], [str(r + 1) for r in range(rows)])
    figure.colorbar(shown, ax=ax, label="cosine similarity")
    return figure


HEAD_CHOICES = ("mean", "rollout")


def plot_attention_view(image: torch.Tensor, weights: torch.Tensor, model_patch: int, patch_size: int,
                        layer: int = -1, head: int | str = "mean") -> Figure:
    """Left: `image` cut into `patch_size` patches. Right: the model's CLS attention (see `attention_map`) on it."""
    height, width = image.shape[-2:]
    grid = grid_size((height, width), model_patch)
    tokens, model_tokens = sequence_length((height, width), patch_size), weights.shape[-1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
    plot_patch_grid(image, patch_size, ax=left, numbers=tokens <= 65)
    left.set_title(f"patch {patch_size} px: {tokens} tokens,\nattention cost ~{(tokens / model_tokens) ** 2:.2g}x "
                   f"the model's", fontsize=9)
    right.imshow(overlay(image, attention_map(weights, grid, layer, head)))
    which = "rollout over all layers" if head == "rollout" else f"layer {layer % len(weights)}, head {head}"
    right.set_title(f"CLS attention, {which}\n(the model's own {model_patch} px patches)", fontsize=9)
    right.axis("off")
    figure.tight_layout()
    return figure


def attention_explorer(model: nn.Module, images: Sequence[torch.Tensor], spec: ImageSpec,
                       patch_sizes: Sequence[int] | None = None):
    """Pick an image, a patch size, a layer and a head; see the patch grid and the attention overlay update.

    `model` is a transformers ViT with eager attention, `images` raw uint8 tensors [3, H, W], `spec` the model's
    input size and normalisation. Headless (COURSE_HEADLESS=1) it shows one static view.
    """
    import ipywidgets

    if len(images) == 0:
        raise ValueError("attention_explorer needs at least one image.")
    config = model.config
    model_patch = config.patch_size
    if not isinstance(model_patch, int):
        raise ValueError(f"attention_explorer needs square patches, but the model's patch size is {model_patch}.")
    if patch_sizes is None:
        patch_sizes = sorted({p for p in (2, 4, 7, 8, 14, 16, 28, 32, model_patch)
                              if spec.size[0] % p == 0 and spec.size[1] % p == 0})

    @lru_cache(maxsize=32)
    def attentions_of(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return model_attentions(model, images[index], spec)

    def draw(image: int, patch_size: int, layer: int, head: int | str) -> Figure:
        resized, weights = attentions_of(image)
        return plot_attention_view(resized, weights, model_patch, patch_size, layer, head)

    return widgets.explorer(
        draw,
        image=ipywidgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image"),
        patch_size=ipywidgets.Dropdown(options=list(patch_sizes), value=model_patch, description="patch size"),
        layer=ipywidgets.IntSlider(value=config.num_hidden_layers - 1, min=0, max=config.num_hidden_layers - 1,
                                   description="layer"),
        head=ipywidgets.Dropdown(options=[*HEAD_CHOICES, *range(config.num_attention_heads)], value="mean",
                                 description="head"),
    )


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def patchify(images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """Cut images [B, C, H, W] into flattened patches [B, N, C*P*P], row by row.

    Each patch is flattened channel first, like a Conv2d kernel, so a linear layer with the conv's weights
    reshaped to [D, C*P*P] gives exactly the patch embedding.
    """
    batch, channels, height, width = images.shape
    rows, cols = grid_size((height, width), patch_size)
    patch_h, patch_w = as_pair(patch_size)
    patches = images.reshape(batch, channels, rows, patch_h, cols, patch_w)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # B, rows, cols, C, P, P
    return patches.reshape(batch, rows * cols, channels * patch_h * patch_w)


class PatchEmbedding(nn.Module):
    """Cut the image into patches and project each to a D-dimensional token: one strided convolution."""

    def __init__(self, patch_size: int | Sequence[int], num_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = as_pair(patch_size)
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] -> [B, D, rows, cols] -> [B, rows*cols, D]
        return self.projection(images).flatten(2).transpose(1, 2)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)): how much each query token attends to each key token; rows sum to 1."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention for one head: softmax(Q K^T / sqrt(d)) V."""
    return attention_weights(q, k) @ v


class MultiHeadAttention(nn.Module):
    """Project tokens to queries, keys and values, attend in each head separately, then mix the heads."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        inner_size = num_heads * self.head_dim
        self.query = nn.Linear(hidden_size, inner_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, inner_size, bias=qkv_bias)
        self.value = nn.Linear(hidden_size, inner_size, bias=qkv_bias)
        self.output = nn.Linear(inner_size, hidden_size)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, heads*d] -> [B, heads, N, d]"""
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        heads = attention(q, k, v)  # [B, heads, N, d]
        merged = heads.transpose(1, 2).flatten(2)  # [B, N, heads*d]
        return self.output(merged)


class MLP(nn.Module):
    """Per-token feed-forward network: expand (usually 4x), non-linearity (GELU), project back."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + Attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, *, qkv_bias: bool = True,
                 head_dim: int | None = None, activation: str = "gelu", layer_norm_eps: float = 1e-12):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention = MultiHeadAttention(hidden_size, num_heads, qkv_bias, head_dim)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = MLP(hidden_size, intermediate_size, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def interpolate_position_embeddings(position_embeddings: torch.Tensor, old_grid: tuple[int, int],
                                    new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize learned position embeddings [1, 1+N, D] to another patch grid (bicubic, CLS entry unchanged).

    This is how a ViT trained at one resolution runs at another: the patch embeddings are laid out on their
    grid as a D-channel image and resized, as transformers does with `interpolate_pos_encoding=True`.
    """
    if old_grid == new_grid:
        return position_embeddings
    dim = position_embeddings.shape[-1]
    cls_position, patch_positions = position_embeddings[:, :1], position_embeddings[:, 1:]
    patch_positions = patch_positions.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    patch_positions = F.interpolate(patch_positions, size=new_grid, mode="bicubic", align_corners=False)
    patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_position, patch_positions], dim=1)


def check_config(config: ViTConfig) -> None:
    """Raise ValueError when `config` describes a ViT that the scratch model cannot build."""
    if getattr(config, "head_dim", None) is None and config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}; choose a head count that divides the hidden size."
        )
    grid_size(config.image_size, config.patch_size)
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"hidden_act {config.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}."
        )


class ScratchViT(nn.Module):
    """The whole ViT: patch tokens + CLS token + position embeddings -> encoder blocks -> norm -> classify CLS.

    Built from a transformers `ViTConfig` so it has the same shapes as `ViTForImageClassification`.
    Dropout is left out: the lesson runs this model in eval mode only.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        check_config(config)
        self.config = config
        self.grid = grid_size(config.image_size, config.patch_size)
        hidden = config.hidden_size
        self.patch_embedding = PatchEmbedding(config.patch_size, config.num_channels, hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], hidden))
        nn.init.trunc_normal_(self.cls_token, std=config.initializer_range)
        nn.init.trunc_normal_(self.position_embeddings, std=config.initializer_range)
        self.blocks = nn.ModuleList(
            EncoderBlock(hidden, config.num_attention_heads, config.intermediate_size, qkv_bias=config.qkv_bias,
                         head_dim=getattr(config, "head_dim", None), activation=config.hidden_act,
                         layer_norm_eps=config.layer_norm_eps)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.head = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def embed(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Images [B, C, H, W] -> token sequence [B, 1+N, D] with CLS token and position embeddings."""
        patches = self.patch_embedding(images)
        cls = self.cls_token.expand(len(images), -1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        (height, width), (patch_h, patch_w) = images.shape[2:], self.patch_embedding.patch_size
        new_grid = (height // patch_h, width // patch_w)
        if new_grid != self.grid and not interpolate_pos_encoding:
            raise ValueError(
                f"Images of size {(height, width)} do not match the model's {as_pair(self.config.image_size)}; "
                "resize them or pass interpolate_pos_encoding=True."
            )
        return tokens + interpolate_position_embeddings(self.position_embeddings, self.grid, new_grid)

    def forward(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Class logits [B, num_labels] for images [B, C, H, W]."""
        x = self.embed(images, interpolate_pos_encoding)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])

    @classmethod
    def from_transformers(cls, hf_model: ViTForImageClassification) -> "ScratchViT":
        """A ScratchViT holding a copy of the weights of a transformers `ViTForImageClassification`."""
        if not isinstance(hf_model, ViTForImageClassification):
            raise TypeError(
                f"from_transformers expects a ViTForImageClassification, got {type(hf_model).__name__}; "
                "load the model with ViTForImageClassification.from_pretrained or helpers.models.load_model."
            )
        weight = hf_model.vit.embeddings.patch_embeddings.projection.weight
        with torch.device("meta"):  # skip random initialisation: every tensor is overwritten below
            model = cls(hf_model.config)
        model = model.to_empty(device=weight.device).to(weight.dtype)
        for mine, theirs in transformers_names(hf_model.config.num_hidden_layers).items():
            if mine in ("cls_token", "position_embeddings"):
                with torch.no_grad():
                    model.get_parameter(mine).copy_(hf_model.get_parameter(theirs))
            else:
                model.get_submodule(mine).load_state_dict(hf_model.get_submodule(theirs).state_dict())
        return model.train(hf_model.training)


# Where each part of ScratchViT lives in transformers' ViTForImageClassification; {i} is the layer index.
TRANSFORMERS_NAMES = {
    "patch_embedding.projection": "vit.embeddings.patch_embeddings.projection",
    "cls_token": "vit.embeddings.cls_token",
    "position_embeddings": "vit.embeddings.position_embeddings",
    "blocks.{i}.norm1": "vit.layers.{i}.layernorm_before",
    "blocks.{i}.attention.query": "vit.layers.{i}.attention.q_proj",
    "blocks.{i}.attention.key": "vit.layers.{i}.attention.k_proj",
    "blocks.{i}.attention.value": "vit.layers.{i}.attention.v_proj",
    "blocks.{i}.attention.output": "vit.layers.{i}.attention.o_proj",
    "blocks.{i}.norm2": "vit.layers.{i}.layernorm_after",
    "blocks.{i}.mlp.fc1": "vit.layers.{i}.mlp.fc1",
    "blocks.{i}.mlp.fc2": "vit.layers.{i}.mlp.fc2",
    "norm": "vit.layernorm",
    "head": "classifier",
}


def transformers_names(num_layers: int) -> dict[str, str]:
    """`TRANSFORMERS_NAMES` spelled out for a model with `num_layers` encoder blocks."""
    return {
        mine.format(i=i): theirs.format(i=i)
        for mine, theirs in TRANSFORMERS_NAMES.items()
        for i in (range(num_layers) if "{i}" in mine else [0])
    }


def parameter_budget(config: ViTConfig) -> dict[str, int]:
    """Parameters of a `ViTForImageClassification` with this config, part by part; the values sum to the total."""
    check_config(config)
    hidden, layers, channels = config.hidden_size, config.num_hidden_layers, config.num_channels
    rows, cols = grid_size(config.image_size, config.patch_size)
    patch_h, patch_w = as_pair(config.patch_size)
    inner = config.num_attention_heads * (getattr(config, "head_dim", None) or hidden // config.num_attention_heads)
    qkv = 3 * (hidden * inner + inner * config.qkv_bias)
    return {
        "patch embedding": channels * patch_h * patch_w * hidden + hidden,
        "position embeddings + CLS": (rows * cols + 1) * hidden + hidden,
        "attention": layers * (qkv + inner * hidden + hidden),
        "MLP": layers * (2 * hidden * config.intermediate_size + config.intermediate_size + hidden),
        "norms": (2 * layers + 1) * 2 * hidden,
        "head": config.num_labels * (hidden + 1),
    }


def standard_configs(num_labels: int = 1000) -> dict[str, ViTConfig]:
    """The ViT sizes of the papers (Ti, S, B, L with 16x16 patches at 224 px, MLP 4x hidden)."""
    sizes = {"ViT-Ti/16": (192, 12, 3), "ViT-S/16": (384, 12, 6), "ViT-B/16": (768, 12, 12), "ViT-L/16": (1024, 24, 16)}
    return {
        name: ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, image_size=224, patch_size=16, num_labels=num_labels)
        for name, (hidden, layers, heads) in sizes.items()
    }


PUBLISHED_SIZES = {"ViT-Ti/16": 5.7e6, "ViT-S/16": 22e6, "ViT-B/16": 86e6, "ViT-L/16": 304e6}  # 1000 classes


def budget_table(configs: dict[str, ViTConfig]) -> str:
    """A plain-text table of `parameter_budget` per model with the total and the published size, in millions
    (thousands when every model is below a million)."""
    budgets = {name: parameter_budget(config) for name, config in configs.items()}
    parts = list(next(iter(budgets.values())))
    scale, unit = (1e6, "M") if max(sum(budget.values()) for budget in budgets.values()) >= 1e6 else (1e3, "k")
    rows = [[part, *(f"{budget[part] / scale:.2f}{unit}" for budget in budgets.values())] for part in parts]
    rows.append(["total", *(f"{sum(budget.values()) / scale:.2f}{unit}" for budget in budgets.values())])
    rows.append(["published", *(f"{PUBLISHED_SIZES[name] / 1e6:g}M" if name in PUBLISHED_SIZES else "-"
                                for name in budgets)])
    header = ["part", *budgets]
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(line, widths))) for line in [header, *rows]]
    return "\n".join(lines)


def _new_axes(ax: plt.Axes | None, figsize: tuple[float, float] = (4, 4)) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        return ax.figure, ax
    figure, ax = plt.subplots(figsize=figsize)
    return figure, ax


def plot_patch_grid(image: torch.Tensor, patch_size: int | Sequence[int], ax: plt.Axes | None = None,
                    numbers: bool = True) -> Figure:
    """An image [3, H, W] cut into patches: grid lines between patches and, if `numbers`, each patch's token index."""
    array = as_displayable(image)
    height, width = array.shape[:2]
    rows, cols = grid_size((height, width), patch_size)
    patch_h, patch_w = as_pair(patch_size)
    figure, ax = _new_axes(ax)
    ax.imshow(array)
    for y in range(0, height + 1, patch_h):
        ax.axhline(y - 0.5, color="white", linewidth=1)
    for x in range(0, width + 1, patch_w):
        ax.axvline(x - 0.5, color="white", linewidth=1)
    if numbers:
        for index in range(rows * cols):
            row, col = divmod(index, cols)
            ax.text(col * patch_w + patch_w / 2 - 0.5, row * patch_h + patch_h / 2 - 0.5, str(index + 1),
                    color="white", fontsize=7, ha="center", va="center")
    ax.set_title(f"{rows}x{cols} = {rows * cols} patches of {patch_h}x{patch_w} px")
    ax.axis("off")
    return figure


def plot_token_cost(image_sizes: Sequence[int], patch_sizes: Sequence[int] = (8, 16, 32), hidden_size: int = 768,
                    intermediate_size: int | None = None,
                    marked: dict[str, tuple[int, int]] | None = None) -> Figure:
    """Tokens (left) and per-layer GFLOPs of attention and MLP (right) against the side of square images.

    One colour per patch size; `marked` labels points by name, {label: (image size, patch size)}
    (default: ViT-B/16 at 224 and 384 px).
    """
    intermediate_size = intermediate_size or 4 * hidden_size
    marked = {"ViT-B/16 @224": (224, 16), "ViT-B/16 @384": (384, 16)} if marked is None else marked
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for index, patch in enumerate(patch_sizes):
        sizes = [size for size in image_sizes if size % patch == 0]
        tokens = [sequence_length(size, patch) for size in sizes]
        color = f"C{index}"
        left.plot(sizes, tokens, marker=".", color=color, label=f"patch {patch}")
        right.plot(sizes, [attention_flops(n, hidden_size) / 1e9 for n in tokens], marker=".", color=color,
                   label=f"attention, patch {patch}")
        right.plot(sizes, [mlp_flops(n, hidden_size, intermediate_size) / 1e9 for n in tokens], linestyle="--",
                   color=color, label=f"MLP, patch {patch}")
    for label, (size, patch) in marked.items():
        tokens = sequence_length(size, patch)
        for ax, value in ((left, tokens), (right, attention_flops(tokens, hidden_size) / 1e9)):
            ax.plot([size], [value], marker="*", markersize=12, color="black", linestyle="none")
            ax.annotate(f"{label}\n{value:,.0f}" if ax is left else f"{label}\n{value:.1f}", (size, value),
                        textcoords="offset points", xytext=(6, -14), fontsize=8)
    left.set(xlabel="image side (px)", ylabel="tokens (patches + CLS)", yscale="log", title="Sequence length")
    right.set(xlabel="image side (px)", ylabel="GFLOPs per block, one image", yscale="log",
              title=f"Cost of one encoder block, D={hidden_size}")
    left.legend(fontsize=8)
    right.legend(fontsize=7, ncols=2)
    figure.tight_layout()
    return figure


def plot_parameter_budget(configs: dict[str, ViTConfig]) -> Figure:
    """Stacked bars: where the parameters of each model go (millions)."""
    budgets = {name: parameter_budget(config) for name, config in configs.items()}
    parts = list(next(iter(budgets.values())))
    figure, ax = plt.subplots(figsize=(7, 4))
    bottoms = np.zeros(len(budgets))
    for part in parts:
        values = np.array([budget[part] for budget in budgets.values()]) / 1e6
        ax.bar(list(budgets), values, bottom=bottoms, label=part)
        bottoms += values
    for x, total in enumerate(bottoms):
        ax.text(x, total, f"{total:.1f}M", ha="center", va="bottom")
    ax.set(ylabel="parameters (millions)", title="Parameter budget")
    ax.legend()
    figure.tight_layout()
    return figure


class InterpolatedPositions(nn.Module):
    """A transformers ViT that accepts any image size: each call interpolates its position embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        return self.model(pixel_values, interpolate_pos_encoding=True)


def accuracy_by_resolution(model: nn.Module, dataset, spec, sizes: Sequence[int], batch_size: int = 256,
                           progress: bool = False) -> dict[int, float]:
    """Test accuracy of `model` on `dataset` (raw uint8 images) resized to each square size in `sizes`.

    `spec` (a `helpers.data.ImageSpec`) gives the normalisation; sizes other than the model's own run with
    interpolated position embeddings.
    """
    from helpers.data.transforms import eval_transform
    from helpers.evaluate.metrics import accuracy
    from helpers.evaluate.predict import predict

    wrapped = InterpolatedPositions(model)
    results = {}
    for size in sizes:
        resized = dataset.with_transform(eval_transform(dataclasses.replace(spec, size=(size, size))))
        predictions = predict(wrapped, resized, batch_size=batch_size, progress=progress)
        results[size] = accuracy(predictions.preds, predictions.labels)
    return results


def small_cnn(num_classes: int, num_channels: int = 3, width: int = 32) -> nn.Sequential:
    """A three-stage CNN baseline (conv-BN-ReLU-max-pool at widths w, 2w, 4w; global average pool; linear).

    Its convolutions build in what a ViT must learn from data: locality and translation equivariance.
    """
    stages, channels = [], num_channels
    for out_channels in (width, 2 * width, 4 * width):
        stages += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = out_channels
    return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


@checker
def check_token_arithmetic(tokens: int, flops: float, *, image_size: int | Sequence[int], patch_size: int,
                           hidden_size: int) -> None:
    """Check the sequence length and the FLOPs of one attention layer for a square-patch ViT config."""
    for name, value in (("tokens", tokens), ("flops", flops)):
        assert isinstance(value, numbers.Real) and not isinstance(value, bool), (
            f"Set {name} to a number, not {type(value).__name__}."
        )
    expected_tokens = sequence_length(image_size, patch_size)
    assert tokens != expected_tokens - 1, "Off by one: the sequence also holds the CLS token."
    assert tokens == expected_tokens, (
        f"The sequence length is not {tokens}: count the patches, (H/P)·(W/P), then add the CLS token."
    )
    expected = attention_flops(tokens, hidden_size)
    mistakes = {
        attention_flops(tokens - 1, hidden_size): "Count the FLOPs over the whole sequence, CLS token included.",
        expected / 2: "A multiply-add counts as 2 FLOPs: double your count.",
        4 * tokens**2 * hidden_size: "Add the four projections (Q, K, V and output), 8·N·D² FLOPs.",
        8 * tokens * hidden_size**2: "Add the scores Q·Kᵀ and the weighted sum of V, 4·N²·D FLOPs.",
    }
    for wrong, message in mistakes.items():
        assert not math.isclose(flops, wrong, rel_tol=1e-6), message
    assert math.isclose(flops, expected, rel_tol=1e-6), (
        f"{flops:.4g} FLOPs is not the cost of one attention layer: add 8·N·D² for the projections and 4·N²·D "
        "for the scores and the weighted sum."
    )
    print(f"Correct: {tokens} tokens; one attention layer costs {flops / 1e9:.1f} GFLOPs per image, "
          f"{4 * tokens**2 * hidden_size / flops:.0%} of it in the N² part.")


@checker
def check_attention_head(attend) -> None:
    """Check a function `attend(q, k, v)` that computes one head of scaled dot-product attention."""
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 7, 16, generator=generator), torch.randn(2, 9, 16, generator=generator)
    v = torch.randn(2, 9, 5, generator=generator)
    result = answer_of("attend(q, k, v) on q [2, 7, 16], k [2, 9, 16], v [2, 9, 5]", attend, q, k, v)
    assert isinstance(result, torch.Tensor), f"attend must return a tensor, got {type(result).__name__}."
    assert result.shape == (2, 7, 5), (
        f"The result has shape {tuple(result.shape)}; it should be [batch, queries, value dim] = (2, 7, 5)."
    )
    scores = q @ k.transpose(-2, -1)
    mistakes = {
        "Divide the scores by √d (d = 16 here) before the softmax.": scores.softmax(-1) @ v,
        "Take the softmax over the keys (the last dimension), so each query's weights sum to 1.":
            (scores / 4).softmax(-2) @ v,
        "Divide the scores by the square root of d, not by d itself.": (scores / 16).softmax(-1) @ v,
    }
    for message, wrong in mistakes.items():
        assert not torch.allclose(result, wrong, atol=1e-5), message
    difference = (result - attention(q, k, v)).abs().max().item()
    assert difference < 1e-5, (
        f"The result differs from softmax(Q·Kᵀ/√d)·V by up to {difference:.3g}; compare your steps with "
        "helpers.lessons.l01_vit_theory.attention_weights."
    )
    print("Correct: your head matches softmax(Q·Kᵀ/√d)·V.")


@checker
def check_quadratic_share(share: float, *, image_size: int, patch_size: int, hidden_size: int) -> None:
    """Exercise checker: `share` is the fraction of one encoder block's FLOPs (attention and MLP with 4·D hidden
    units) spent in the N² part of attention (scores and weighted sum), for one image."""
    if not (isinstance(share, (int, float)) and 0 <= share <= 1):
        raise AssertionError(f"Give the share as a fraction between 0 and 1, got {share!r}.")
    tokens = sequence_length(image_size, patch_size)
    quadratic = 4 * tokens**2 * hidden_size
    block = attention_flops(tokens, hidden_size) + mlp_flops(tokens, hidden_size, 4 * hidden_size)
    expected = quadratic / block
    attention_only = quadratic / attention_flops(tokens, hidden_size)
    if math.isclose(share, attention_only, rel_tol=1e-3):
        raise AssertionError("That is the share within attention alone: a block also runs the MLP, 16·N·D² FLOPs.")
    without_cls = 4 * (tokens - 1) ** 2 * hidden_size / (attention_flops(tokens - 1, hidden_size)
                                                          + mlp_flops(tokens - 1, hidden_size, 4 * hidden_size))
    if math.isclose(share, without_cls, rel_tol=1e-3):
        raise AssertionError("Count the CLS token too: attention runs over N + 1 tokens.")
    if not math.isclose(share, expected, rel_tol=1e-3):
        raise AssertionError("Add up one block: 8·N·D² (the four projections) + 4·N²·D (scores and weighted sum) + "
                             "16·N·D² (the MLP), with N the tokens including CLS; the N² part is 4·N²·D of it.")
    print(f"Correct: {tokens} tokens; {expected:.1%} of a block's FLOPs are in the N² part, so the whole block "
          f"grows almost linearly with the tokens until N approaches 6·D = {6 * hidden_size}.")
