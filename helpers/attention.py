"""What a ViT looks at: CLS attention maps and attention rollout (lessons 01 and 06).

The functions read the `attentions` that a transformers ViT returns with `output_attentions=True`:
a tuple with one tensor [batch, heads, tokens, tokens] per layer, token 0 being CLS. Only the eager
attention implementation returns them, so load the model with `attn_implementation="eager"`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torch import nn
from torchvision.transforms import v2

from helpers._moved import forwarder
from helpers.data.transforms import ImageSpec, to_model_input
from helpers.models import device_of, eval_mode, grid_size
from helpers.plots import as_displayable


def rollout_maps(
    model: torch.nn.Module, dataset, indices, discard_ratio: float = 0.0, head_fusion: str = "mean"
) -> torch.Tensor:
    """Attention rollout ([len(indices), rows, cols]) of a transformers ViT on the chosen items of ``dataset`` (lesson 06).

    ``dataset`` yields model-ready images (with the eval transform). The model must return attention
    weights: load it with ``attn_implementation="eager"``. See ``helpers.attention.attention_rollout``.
    """
    indices = [int(i) for i in indices]
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    if patch_size is None:
        raise ValueError("rollout_maps needs a transformers ViT: a model whose config has a patch_size.")
    if not indices:
        raise ValueError("rollout_maps got no indices; pass the images to explain, e.g. most_confident_mistakes(...).")
    images = torch.stack([dataset[index][0] for index in indices])
    grid = grid_size(tuple(images.shape[-2:]), patch_size)
    with eval_mode(model), torch.inference_mode():
        attentions = model(images.to(device_of(model)), output_attentions=True).attentions
    return torch.stack(
        [
            attention_rollout(attentions, discard_ratio, head_fusion, grid=grid, index=position)
            for position in range(len(indices))
        ]
    )


HEAD_FUSIONS = {
    "mean": lambda heads: heads.mean(dim=0),
    "max": lambda heads: heads.amax(dim=0),
    "min": lambda heads: heads.amin(dim=0),
}


def stack_attentions(attentions: Sequence[torch.Tensor] | None, index: int = 0) -> torch.Tensor:
    """One image's attention weights as a tensor [layers, heads, tokens, tokens] (lesson 01)."""
    if not attentions or any(layer is None for layer in attentions):
        raise ValueError(
            "The model returned no attention weights; load it with attn_implementation=\"eager\" "
            "and call it with output_attentions=True."
        )
    return torch.stack([layer[index] for layer in attentions]).detach().float().cpu()


def patch_grid(num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (rows, cols) layout of `num_patches` tokens: `grid` if given, else a square (lesson 01)."""
    if grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patches do not form a square; pass grid=(rows, cols).")
        return side, side
    if grid[0] * grid[1] != num_patches:
        raise ValueError(f"grid {tuple(grid)} holds {grid[0] * grid[1]} patches but the attentions have {num_patches}.")
    return tuple(grid)


def cls_attention(attentions: Sequence[torch.Tensor] | None, layer: int = -1, *, grid: tuple[int, int] | None = None,
                  index: int = 0) -> torch.Tensor:
    """Attention of the CLS token to every patch in one layer, per head: [heads, rows, cols] (lesson 01).

    `index` picks the image in the batch; `grid` gives the patch layout for non-square images.
    """
    weights = stack_attentions(attentions, index)[layer]  # [heads, tokens, tokens]
    rows, cols = patch_grid(weights.shape[-1] - 1, grid)
    return weights[:, 0, 1:].reshape(-1, rows, cols)


def rollout_matrix(attentions: Sequence[torch.Tensor] | None, discard_ratio: float = 0.0, head_fusion: str = "mean",
                   *, index: int = 0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) as a [tokens, tokens] matrix whose rows sum to 1 (lesson 01).

    Per layer: fuse the heads, drop the weakest `discard_ratio` of each row's weights, add the identity for
    the residual connection and renormalise the rows; then multiply the layers, first layer rightmost.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is unknown; use one of {sorted(HEAD_FUSIONS)}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    weights = stack_attentions(attentions, index)
    tokens = weights.shape[-1]
    identity = torch.eye(tokens)
    rollout = identity
    for layer in weights:
        fused = HEAD_FUSIONS[head_fusion](layer)
        dropped = int(tokens * discard_ratio)
        if dropped:
            weakest = fused.topk(dropped, dim=-1, largest=False).indices
            fused = fused.scatter(-1, weakest, 0.0)
        mixed = fused + identity
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


def attention_rollout(attentions: Sequence[torch.Tensor] | None, discard_ratio: float = 0.0, head_fusion: str = "mean",
                      *, grid: tuple[int, int] | None = None, index: int = 0) -> torch.Tensor:
    """How much the CLS token's output draws on each patch through all layers: [rows, cols] (lessons 01 and 06)."""
    rollout = rollout_matrix(attentions, discard_ratio, head_fusion, index=index)
    rows, cols = patch_grid(rollout.shape[-1] - 1, grid)
    return rollout[0, 1:].reshape(rows, cols)


def overlay(image: torch.Tensor, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5,
            cmap: str = "inferno") -> np.ndarray:
    """An image [3, H, W] with `heatmap` ([rows, cols]) upsampled, min-max scaled and blended on top: [H, W, 3] (lessons 01 and 06)."""
    picture = as_displayable(image)
    heat = torch.as_tensor(heatmap).detach().float().cpu()
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [rows, cols], got shape {tuple(heat.shape)}.")
    heat = F.interpolate(heat[None, None], size=picture.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    colored = colormaps[cmap](heat.numpy())[..., :3]
    return ((1 - alpha) * picture + alpha * colored).astype(np.float32)


def model_attentions(model: nn.Module, image: torch.Tensor, spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image resized to the model's input, uint8 [3, H, W]; its attentions [layers, heads, tokens, tokens]) (lesson 01)."""
    resized = v2.Resize(spec.size, antialias=True)(torch.as_tensor(image))
    pixels = to_model_input(spec)(resized)[None].to(next(model.parameters()).device)
    with torch.inference_mode():
        attentions = model(pixels, output_attentions=True).attentions
    return resized, stack_attentions(attentions)


def attention_map(weights: torch.Tensor, grid: tuple[int, int], layer: int = -1,
                  head: int | str = "mean") -> torch.Tensor:
    """From attentions [layers, heads, tokens, tokens]: CLS attention of one `layer` for one `head` (an index)
    or the mean of the heads ("mean"), or the rollout over all layers ("rollout"); shape [rows, cols] (lesson 01)."""
    if head == "rollout":
        return attention_rollout(tuple(weights[:, None]), grid=grid)
    maps = cls_attention(tuple(weights[:, None]), layer, grid=grid)
    if head == "mean":
        return maps.mean(dim=0)
    if not (isinstance(head, int) and 0 <= head < len(maps)):
        raise ValueError(f"head {head!r} is not a head of this model; pick 0 to {len(maps) - 1}, 'mean' or 'rollout'.")
    return maps[head]


__getattr__ = forwarder(__name__)  # names that moved to the lesson companion
