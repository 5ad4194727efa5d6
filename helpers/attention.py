"""What a ViT looks at: CLS attention maps, attention rollout and position-embedding similarity.

The attention functions read the `attentions` that a transformers ViT returns with `output_attentions=True`:
a tuple with one tensor [batch, heads, tokens, tokens] per layer, token 0 being CLS. Only the eager attention
implementation returns them, so load the model with `attn_implementation="eager"` (or call
`model.set_attn_implementation("eager")`). `attention_explorer` puts it all behind ipywidgets controls.
"""

import math
from collections.abc import Sequence
from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn
from torchvision.transforms import v2

from helpers import widgets
from helpers.data import ImageSpec, to_model_input
from helpers.plots import as_displayable
from helpers.scratch import grid_size, plot_patch_grid, sequence_length

HEAD_FUSIONS = {
    "mean": lambda heads: heads.mean(dim=0),
    "max": lambda heads: heads.amax(dim=0),
    "min": lambda heads: heads.amin(dim=0),
}


def stack_attentions(attentions: Sequence[torch.Tensor] | None, index: int = 0) -> torch.Tensor:
    """One image's attention weights as a tensor [layers, heads, tokens, tokens]."""
    if not attentions or any(layer is None for layer in attentions):
        raise ValueError(
            "The model returned no attention weights; load it with attn_implementation=\"eager\" "
            "and call it with output_attentions=True."
        )
    return torch.stack([layer[index] for layer in attentions]).detach().float().cpu()


def patch_grid(num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (rows, cols) layout of `num_patches` tokens: `grid` if given, else a square."""
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
    """Attention of the CLS token to every patch in one layer, per head: [heads, rows, cols].

    `index` picks the image in the batch; `grid` gives the patch layout for non-square images.
    """
    weights = stack_attentions(attentions, index)[layer]  # [heads, tokens, tokens]
    rows, cols = patch_grid(weights.shape[-1] - 1, grid)
    return weights[:, 0, 1:].reshape(-1, rows, cols)


def rollout_matrix(attentions: Sequence[torch.Tensor] | None, discard_ratio: float = 0.0, head_fusion: str = "mean",
                   *, index: int = 0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) as a [tokens, tokens] matrix whose rows sum to 1.

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
    """How much the CLS token's output draws on each patch through all layers: [rows, cols]."""
    rollout = rollout_matrix(attentions, discard_ratio, head_fusion, index=index)
    rows, cols = patch_grid(rollout.shape[-1] - 1, grid)
    return rollout[0, 1:].reshape(rows, cols)


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


def overlay(image: torch.Tensor, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5,
            cmap: str = "inferno") -> np.ndarray:
    """An image [3, H, W] with `heatmap` ([rows, cols]) upsampled, min-max scaled and blended on top: [H, W, 3]."""
    picture = as_displayable(image)
    heat = torch.as_tensor(heatmap).detach().float().cpu()
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [rows, cols], got shape {tuple(heat.shape)}.")
    heat = F.interpolate(heat[None, None], size=picture.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    colored = colormaps[cmap](heat.numpy())[..., :3]
    return ((1 - alpha) * picture + alpha * colored).astype(np.float32)


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


# ---------------------------------------------------------------------------------------------------------------
# Explorer: image, patch size, layer and head
# ---------------------------------------------------------------------------------------------------------------

HEAD_CHOICES = ("mean", "rollout")


def model_attentions(model: nn.Module, image: torch.Tensor, spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image resized to the model's input, uint8 [3, H, W]; its attentions [layers, heads, tokens, tokens])."""
    resized = v2.Resize(spec.size, antialias=True)(torch.as_tensor(image))
    pixels = to_model_input(spec)(resized)[None].to(next(model.parameters()).device)
    with torch.inference_mode():
        attentions = model(pixels, output_attentions=True).attentions
    return resized, stack_attentions(attentions)


def attention_map(weights: torch.Tensor, grid: tuple[int, int], layer: int = -1,
                  head: int | str = "mean") -> torch.Tensor:
    """From attentions [layers, heads, tokens, tokens]: CLS attention of one `layer` for one `head` (an index)
    or the mean of the heads ("mean"), or the rollout over all layers ("rollout"); shape [rows, cols]."""
    if head == "rollout":
        return attention_rollout(tuple(weights[:, None]), grid=grid)
    maps = cls_attention(tuple(weights[:, None]), layer, grid=grid)
    if head == "mean":
        return maps.mean(dim=0)
    if not (isinstance(head, int) and 0 <= head < len(maps)):
        raise ValueError(f"head {head!r} is not a head of this model; pick 0 to {len(maps) - 1}, 'mean' or 'rollout'.")
    return maps[head]


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
