"""A Vision Transformer written from scratch, for the theory lesson.

Every part of the model is a few lines of plain PyTorch: patch embedding, attention, multi-head attention,
MLP, pre-norm encoder block and the full classifier. `ScratchViT.from_transformers` copies the weights of a
transformers `ViTForImageClassification`, so the lesson can show that this short code computes the same logits.
The module also holds the arithmetic of the lesson: patches, sequence length, attention cost and the
parameter budget of the standard ViT sizes, with the figures that go with them.
"""

import math
from collections.abc import Sequence
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from helpers.plots import as_displayable

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


# ---------------------------------------------------------------------------------------------------------------
# Patches and tokens
# ---------------------------------------------------------------------------------------------------------------

def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """Return `size` as (height, width); a single int means a square."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def grid_size(image_size: int | Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, int]:
    """Number of patches along (height, width) when an image is cut into non-overlapping patches."""
    (height, width), (patch_h, patch_w) = as_pair(image_size), as_pair(patch_size)
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"Image size {(height, width)} is not divisible by patch size {(patch_h, patch_w)}; "
            "resize the image or pick a patch size that divides it."
        )
    return height // patch_h, width // patch_w


def sequence_length(image_size: int | Sequence[int], patch_size: int | Sequence[int], cls_token: bool = True) -> int:
    """Number of tokens the encoder sees: one per patch, plus the CLS token."""
    rows, cols = grid_size(image_size, patch_size)
    return rows * cols + int(cls_token)


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


def attention_flops(num_tokens: int, hidden_size: int) -> int:
    """FLOPs of one self-attention layer on one image (a multiply-add counts as 2).

    Q, K, V and output projections cost 8*N*D^2; scores Q K^T and the weighted sum of V cost 4*N^2*D.
    The N^2 term is why doubling the resolution (4x the tokens) makes attention up to 16x as expensive.
    """
    return 8 * num_tokens * hidden_size**2 + 4 * num_tokens**2 * hidden_size


def mlp_flops(num_tokens: int, hidden_size: int, intermediate_size: int) -> int:
    """FLOPs of one encoder MLP on one image: two linear layers, linear in the number of tokens."""
    return 4 * num_tokens * hidden_size * intermediate_size


# ---------------------------------------------------------------------------------------------------------------
# The model, part by part
# ---------------------------------------------------------------------------------------------------------------

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
        vit, embeddings = hf_model.vit, hf_model.vit.embeddings
        weight = embeddings.patch_embeddings.projection.weight
        with torch.device("meta"):  # skip random initialisation: every tensor is overwritten below
            model = cls(hf_model.config)
        model = model.to_empty(device=weight.device).to(weight.dtype)
        pairs = [
            (model.patch_embedding.projection, embeddings.patch_embeddings.projection),
            (model.norm, vit.layernorm),
            (model.head, hf_model.classifier),
        ]
        for block, layer in zip(model.blocks, vit.layers, strict=True):
            pairs += [
                (block.norm1, layer.layernorm_before),
                (block.attention.query, layer.attention.q_proj),
                (block.attention.key, layer.attention.k_proj),
                (block.attention.value, layer.attention.v_proj),
                (block.attention.output, layer.attention.o_proj),
                (block.norm2, layer.layernorm_after),
                (block.mlp.fc1, layer.mlp.fc1),
                (block.mlp.fc2, layer.mlp.fc2),
            ]
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            model.cls_token.copy_(embeddings.cls_token)
            model.position_embeddings.copy_(embeddings.position_embeddings)
        return model.train(hf_model.training)


# ---------------------------------------------------------------------------------------------------------------
# Parameter budget
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------

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


def plot_token_cost(image_sizes: Sequence[int], patch_size: int = 16, hidden_size: int = 768,
                    intermediate_size: int | None = None) -> Figure:
    """Tokens and per-layer FLOPs (attention vs MLP) against image resolution, for square images."""
    intermediate_size = intermediate_size or 4 * hidden_size
    tokens = [sequence_length(size, patch_size) for size in image_sizes]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(image_sizes, tokens, marker="o")
    left.set(xlabel="image size (px)", ylabel="tokens (patches + CLS)", title=f"Sequence length, patch {patch_size}")
    right.plot(image_sizes, [attention_flops(n, hidden_size) / 1e9 for n in tokens], marker="o", label="attention")
    right.plot(image_sizes, [mlp_flops(n, hidden_size, intermediate_size) / 1e9 for n in tokens], marker="o",
               label="MLP")
    right.set(xlabel="image size (px)", ylabel="GFLOPs per layer", title=f"Cost of one block, D={hidden_size}")
    right.legend()
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
