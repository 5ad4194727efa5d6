import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib import colormaps
from transformers import ViTConfig, ViTForImageClassification

from helpers.attention import attention_map, attention_rollout, cls_attention, model_attentions, overlay, rollout_matrix
from helpers.data import ImageSpec
from helpers.lessons.l01_vit_theory import (
    ScratchViT,
    attention_explorer,
    plot_attention_maps,
    plot_attention_view,
    plot_position_similarity,
    position_similarity,
    similarity_by_relation,
)

TINY = dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, num_labels=3)


def random_attentions(layers: int, batch: int, heads: int, tokens: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    return tuple(torch.randn(batch, heads, tokens, tokens).softmax(-1) for _ in range(layers))


def repeated(matrix: torch.Tensor, layers: int, batch: int = 1, heads: int = 2) -> tuple[torch.Tensor, ...]:
    """The same [tokens, tokens] attention in every layer, head and image."""
    return tuple(matrix.expand(batch, heads, *matrix.shape) for _ in range(layers))


def test_rollout_of_identity_attention_is_identity():
    attentions = repeated(torch.eye(10), layers=3)
    assert torch.allclose(rollout_matrix(attentions), torch.eye(10))
    assert torch.equal(attention_rollout(attentions, grid=(3, 3)), torch.zeros(3, 3))


def test_rollout_of_uniform_attention_follows_closed_form():
    tokens, layers = 5, 3
    uniform = torch.full((tokens, tokens), 1 / tokens)
    # each layer is (U + I) / 2, and U @ U = U, so L layers give I / 2^L + (1 - 1 / 2^L) U
    expected = torch.eye(tokens) / 2**layers + (1 - 1 / 2**layers) * uniform
    assert torch.allclose(rollout_matrix(repeated(uniform, layers)), expected, atol=1e-6)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_rows_sum_to_one(head_fusion, discard_ratio):
    rollout = rollout_matrix(random_attentions(4, 2, 3, 17), discard_ratio, head_fusion, index=1)
    assert rollout.shape == (17, 17)
    assert torch.allclose(rollout.sum(-1), torch.ones(17), atol=1e-5)
    assert (rollout >= 0).all()


def test_rollout_fuses_heads_and_discards_weakest_weights():
    row = torch.tensor([0.1, 0.2, 0.3, 0.4])
    low, high = row.expand(4, 4), row.flip(0).expand(4, 4)
    attentions = (torch.stack([low, high])[None],)  # one layer, two heads
    mean = (low + high) / 2 + torch.eye(4)
    assert torch.allclose(rollout_matrix(attentions), mean / mean.sum(-1, keepdim=True))
    kept = torch.where(low >= 0.3, low, 0.0) + torch.eye(4)  # discarding half drops 0.1 and 0.2 in each row
    single_head = (low[None, None],)
    assert torch.allclose(rollout_matrix(single_head, discard_ratio=0.5), kept / kept.sum(-1, keepdim=True))
    maximum = torch.maximum(low, high) + torch.eye(4)
    assert torch.allclose(rollout_matrix(attentions, head_fusion="max"), maximum / maximum.sum(-1, keepdim=True))


def test_rollout_rejects_bad_arguments():
    attentions = random_attentions(1, 1, 1, 5)
    with pytest.raises(ValueError, match="head_fusion 'median' is unknown"):
        rollout_matrix(attentions, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout_matrix(attentions, discard_ratio=1.0)


def test_cls_attention_picks_cls_row_of_the_chosen_layer_and_image():
    attentions = random_attentions(3, 2, 4, 1 + 2 * 3)
    maps = cls_attention(attentions, layer=1, grid=(2, 3), index=1)
    assert maps.shape == (4, 2, 3)
    assert torch.equal(maps[2, 1, 0], attentions[1][1, 2, 0, 1 + 3])


def test_non_square_grids():
    attentions = random_attentions(2, 1, 2, 1 + 8 * 12)
    assert attention_rollout(attentions, grid=(8, 12)).shape == (8, 12)
    with pytest.raises(ValueError, match="do not form a square; pass grid"):
        cls_attention(attentions)
    with pytest.raises(ValueError, match=r"grid \(8, 8\) holds 64 patches"):
        attention_rollout(attentions, grid=(8, 8))


@pytest.mark.parametrize("attentions", [None, (), (None, None)])
def test_missing_attentions_say_to_load_with_eager(attentions):
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        attention_rollout(attentions)
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        cls_attention(attentions)


def test_transformers_attentions_with_sdpa_and_eager():
    images = torch.randn(1, 3, 32, 32)
    sdpa = ViTForImageClassification(ViTConfig(**TINY, attn_implementation="sdpa")).eval()
    with pytest.raises(ValueError, match="eager"):
        cls_attention(sdpa(images, output_attentions=True).attentions)
    eager = ViTForImageClassification(ViTConfig(**TINY, attn_implementation="eager")).eval()
    attentions = eager(images, output_attentions=True).attentions
    assert cls_attention(attentions).shape == (4, 8, 8)
    assert attention_rollout(attentions).shape == (8, 8)


@pytest.mark.parametrize("image_size, rows, cols", [(32, 8, 8), ((32, 48), 8, 12)])
def test_position_similarity_is_cosine_with_unit_diagonal(image_size, rows, cols):
    config = ViTConfig(**{**TINY, "image_size": image_size})
    for model in (ViTForImageClassification(config), ScratchViT(config)):
        similarity = position_similarity(model)
        assert similarity.shape == (rows, cols, rows, cols)
        flat = similarity.reshape(rows * cols, rows * cols)
        assert torch.allclose(flat.diagonal(), torch.ones(rows * cols), atol=1e-6)
        assert torch.allclose(flat, flat.T, atol=1e-6)
        assert flat.abs().max() <= 1 + 1e-6


def test_position_similarity_rejects_models_without_position_embeddings():
    with pytest.raises(ValueError, match="position_embeddings"):
        position_similarity(torch.nn.Linear(2, 2))


def test_overlay_upsamples_and_blends_heatmap():
    image = torch.zeros(3, 32, 48, dtype=torch.uint8)
    heatmap = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    blended = overlay(image, heatmap, alpha=1.0, cmap="viridis")
    assert blended.shape == (32, 48, 3)
    assert np.allclose(blended[0, 0], colormaps["viridis"](1.0)[:3], atol=1e-6)
    assert np.allclose(blended[31, 47], colormaps["viridis"](0.0)[:3], atol=1e-6)
    assert np.array_equal(overlay(image, heatmap, alpha=0.0), np.zeros((32, 48, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="heatmap must be 2-D"):
        overlay(image, torch.zeros(2, 2, 2))


def test_plot_attention_maps_shows_image_and_one_panel_per_map():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    figure = plot_attention_maps(image, torch.rand(4, 8, 8), ncols=3)
    assert sum(len(ax.images) for ax in figure.axes) == 1 + 4
    assert [ax.get_title() for ax in figure.axes if ax.images][1:] == ["head 0", "head 1", "head 2", "head 3"]
    plt.close(figure)
    with pytest.raises(ValueError, match="one title per map"):
        plot_attention_maps(image, torch.rand(4, 8, 8), titles=["a"])


def test_plot_position_similarity_tiles_one_map_per_patch():
    similarity = position_similarity(ScratchViT(ViTConfig(**{**TINY, "image_size": (16, 24)})))
    figure = plot_position_similarity(similarity)
    mosaic = figure.axes[0].images[0].get_array()
    assert mosaic.shape == (4 * 5, 6 * 7)
    assert np.allclose(mosaic[5 + 1, 7 * 2 + 2], 1.0)  # tile (1, 2) is brightest at its own patch
    plt.close(figure)


def eager_tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**TINY, attn_implementation="eager")).eval()


SPEC = ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)


def test_model_attentions_resize_the_image_to_the_model_input():
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    resized, weights = model_attentions(eager_tiny_vit(), image, SPEC)
    assert resized.shape == (3, 32, 32) and resized.dtype == torch.uint8
    assert weights.shape == (2, 4, 65, 65)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 65), atol=1e-5)


def test_attention_map_picks_a_head_the_mean_or_the_rollout():
    weights = torch.stack([layer[0] for layer in random_attentions(3, 1, 4, 1 + 2 * 3)])
    per_layer = tuple(weights[:, None])
    assert torch.equal(attention_map(weights, (2, 3), layer=1, head=2), cls_attention(per_layer, 1, grid=(2, 3))[2])
    assert torch.allclose(attention_map(weights, (2, 3)), cls_attention(per_layer, grid=(2, 3)).mean(0))
    assert torch.allclose(attention_map(weights, (2, 3), head="rollout"), attention_rollout(per_layer, grid=(2, 3)))
    with pytest.raises(ValueError, match="head 4 is not a head of this model; pick 0 to 3"):
        attention_map(weights, (2, 3), head=4)


def test_plot_attention_view_shows_chosen_patch_grid_and_model_attention():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    weights = torch.stack([layer[0] for layer in random_attentions(2, 1, 4, 65)])
    figure = plot_attention_view(image, weights, model_patch=4, patch_size=8, layer=-1, head=1)
    left, right = figure.axes
    assert len(left.texts) == 16 and "17 tokens" in left.get_title()
    assert len(right.images) == 1 and "layer 1, head 1" in right.get_title()
    plt.close(figure)


def test_attention_explorer_draws_one_static_view_when_headless(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    assert attention_explorer(eager_tiny_vit(), images, SPEC) is None
    output = capsys.readouterr().out
    assert "Figure" in output and "static view" in output
    with pytest.raises(ValueError, match="at least one image"):
        attention_explorer(eager_tiny_vit(), [], SPEC)


def test_attention_explorer_is_live_in_jupyter(monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)]
    widget = attention_explorer(eager_tiny_vit(), images, SPEC)
    controls = {child.description: child for child in widget.children[:-1]}
    assert list(controls["patch size"].options) == [2, 4, 8, 16, 32] and controls["patch size"].value == 4
    assert controls["layer"].max == 1 and list(controls["head"].options) == ["mean", "rollout", 0, 1, 2, 3]
    plt.close("all")


def test_similarity_by_relation_averages_the_right_pairs():
    rows, cols = 3, 4
    r1, c1, r2, c2 = torch.meshgrid(*(torch.arange(n) for n in (rows, cols, rows, cols)), indexing="ij")
    # a made-up similarity that encodes the pair itself: 1000*|dr| + |dc|
    similarity = 1000.0 * (r1 - r2).abs() + (c1 - c2).abs()
    means = similarity_by_relation(similarity)
    assert means["neighbours"] == pytest.approx((2 * 3 * 3 * 1 + 2 * 2 * 4 * 1000) / (2 * 3 * 3 + 2 * 2 * 4))
    assert means["same row"] == pytest.approx((1 * 6 + 2 * 4 + 3 * 2) / 12)  # |dc| over the 12 ordered pairs of a row
    assert means["same column"] == pytest.approx(1000 * (1 * 4 + 2 * 2) / 6)
    assert means["left-right mirror"] == pytest.approx((3 + 1 + 1 + 3) / 4)  # columns 0<->3 and 1<->2
    assert means["top-bottom mirror"] == pytest.approx(2000.0)  # rows 0<->2; row 1 is its own mirror
    assert means["all pairs"] == pytest.approx(similarity.sum().item() / (rows * cols * (rows * cols - 1)))
    assert math.isnan(similarity_by_relation(torch.ones(1, 1, 1, 1))["neighbours"])
