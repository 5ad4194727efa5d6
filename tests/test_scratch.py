
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from helpers.course import show_code
from helpers.data import ImageSpec, TensorImages
from helpers.lessons.l01_vit_theory import (
    MLP,
    MultiHeadAttention,
    PatchEmbedding,
    ScratchViT,
    accuracy_by_resolution,
    attention,
    attention_weights,
    budget_table,
    interpolate_position_embeddings,
    parameter_budget,
    patchify,
    plot_parameter_budget,
    plot_patch_grid,
    plot_token_cost,
    small_cnn,
    standard_configs,
    transformers_names,
)
from helpers.models import (
    as_pair,
    attention_flops,
    mlp_flops,
    sequence_length,
)

TINY = dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, num_labels=10)


def tiny_config(**overrides) -> ViTConfig:
    return ViTConfig(**{**TINY, **overrides})


def random_transformers_vit(config: ViTConfig) -> ViTForImageClassification:
    """A transformers ViT whose every tensor (norms and biases too) is random, so each copied weight matters."""
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def logits_of_both(config: ViTConfig, height: int, width: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    hf_model = random_transformers_vit(config)
    scratch = ScratchViT.from_transformers(hf_model)
    images = torch.randn(2, config.num_channels, height, width)
    with torch.no_grad():
        return hf_model(images, **kwargs).logits, scratch(images, **kwargs)


@pytest.mark.parametrize("overrides", [
    {},
    {"hidden_act": "gelu"},
    {"hidden_act": "gelu_new"},
    {"hidden_act": "relu", "num_hidden_layers": 1},
    {"qkv_bias": False},
    {"image_size": (32, 48)},
    {"patch_size": (4, 8), "image_size": (32, 48)},
    {"hidden_size": 96, "num_attention_heads": 6, "intermediate_size": 128, "num_hidden_layers": 2},
    {"hidden_size": 60, "num_attention_heads": 3, "head_dim": 8},
    {"num_channels": 1, "layer_norm_eps": 1e-6},
])
def test_scratch_vit_matches_transformers(overrides):
    config = tiny_config(**overrides)
    height, width = as_pair(config.image_size)
    expected, actual = logits_of_both(config, height, width)
    assert actual.shape == (2, config.num_labels)
    assert expected.abs().max() > 0.1  # a real signal, not near-zero logits
    assert (actual - expected).abs().max() < 1e-5


def test_scratch_vit_without_head_returns_cls_features():
    expected, actual = logits_of_both(tiny_config(num_labels=0), 32, 32)
    assert actual.shape == (2, 64)
    assert (actual - expected).abs().max() < 1e-5


def test_unloaded_scratch_vit_differs_from_transformers():
    config = tiny_config()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        difference = random_transformers_vit(config)(images).logits - ScratchViT(config).eval()(images)
    assert difference.abs().max() > 1e-3


def test_vit_base_16_matches_transformers():
    config = ViTConfig(num_labels=10)  # ViT-B/16 at 224 px, built from the config with random weights
    hf_model = ViTForImageClassification(config).eval()
    scratch = ScratchViT.from_transformers(hf_model)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (scratch(images) - hf_model(images).logits).abs().max() < 1e-5


@pytest.mark.parametrize("height, width", [(48, 48), (16, 16), (48, 40), (24, 64)])
def test_interpolated_position_embeddings_match_transformers(height, width):
    expected, actual = logits_of_both(tiny_config(), height, width, interpolate_pos_encoding=True)
    assert (actual - expected).abs().max() < 1e-5


def test_other_resolution_needs_interpolation():
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        ScratchViT(tiny_config())(torch.randn(1, 3, 48, 48))


def test_non_square_model_interpolates_on_its_own_grid():
    model = ScratchViT(tiny_config(image_size=(32, 48))).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48), interpolate_pos_encoding=True).shape == (1, 10)
    embeddings = torch.randn(1, 1 + 8 * 12, 64)
    resized = interpolate_position_embeddings(embeddings, (8, 12), (16, 12))
    assert resized.shape == (1, 1 + 16 * 12, 64)
    assert torch.equal(resized[:, 0], embeddings[:, 0])
    assert interpolate_position_embeddings(embeddings, (8, 12), (8, 12)) is embeddings


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 66}, "not divisible by num_attention_heads"),
    ({"image_size": 30}, "not divisible by patch size"),
    ({"image_size": (32, 30)}, "not divisible by patch size"),
    ({"hidden_act": "tanh"}, "hidden_act 'tanh' is not supported"),
])
def test_bad_config_raises_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        ScratchViT(tiny_config(**overrides))
    with pytest.raises(ValueError, match=message):
        parameter_budget(tiny_config(**overrides))


def test_from_transformers_rejects_other_models():
    with pytest.raises(TypeError, match="ViTForImageClassification"):
        ScratchViT.from_transformers(ViTModel(tiny_config()))


def test_patchify_orders_patches_row_by_row_channel_first():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 3 * 4 * 4)
    assert torch.equal(patches[:, 0], images[:, :, :4, :4].flatten(1))
    assert torch.equal(patches[:, 1], images[:, :, :4, 4:8].flatten(1))
    assert torch.equal(patches[:, 3], images[:, :, 4:, :4].flatten(1))


def test_patch_embedding_conv_equals_linear_on_patches():
    torch.manual_seed(0)
    embedding = PatchEmbedding(patch_size=4, num_channels=3, hidden_size=16)
    images = torch.randn(2, 3, 16, 24)
    conv = embedding.projection
    linear = patchify(images, 4) @ conv.weight.reshape(16, -1).T + conv.bias
    assert torch.allclose(embedding(images), linear, atol=1e-5)


def test_patchify_rejects_indivisible_images():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 10, 12), 4)


def test_sequence_length():
    assert sequence_length(224, 16) == 14 * 14 + 1
    assert sequence_length(384, 16) == 24 * 24 + 1
    assert sequence_length((32, 48), 4) == 8 * 12 + 1
    assert sequence_length(32, 4, cls_token=False) == 64


def test_attention_matches_pytorch_scaled_dot_product():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    assert torch.allclose(attention_weights(q, k).sum(-1), torch.ones(2, 4, 9))


def test_flop_formulas_match_pytorch_flop_counter():
    tokens, hidden, intermediate = 17, 64, 256
    x = torch.randn(1, tokens, hidden)
    for module, formula in [(MultiHeadAttention(hidden, 4), attention_flops(tokens, hidden)),
                            (MLP(hidden, intermediate), mlp_flops(tokens, hidden, intermediate))]:
        with FlopCounterMode(display=False) as counter:
            module(x)
        assert counter.get_total_flops() == formula


def parts_of_transformers_model(model: ViTForImageClassification) -> dict[str, int]:
    """Group the transformers model's parameters by their names into the budget's parts."""
    groups = [("patch_embeddings", "patch embedding"), ("position_embeddings", "position embeddings + CLS"),
              ("cls_token", "position embeddings + CLS"), (".attention.", "attention"), (".mlp.", "MLP"),
              ("layernorm", "norms"), ("classifier", "head")]
    parts = dict.fromkeys((part for _, part in groups), 0)
    for name, param in model.named_parameters():
        part = next(part for key, part in groups if key in name)
        parts[part] += param.numel()
    return parts


@pytest.mark.parametrize("overrides", [
    {}, {"qkv_bias": False}, {"image_size": (32, 48), "patch_size": (4, 8)}, {"num_channels": 1, "num_labels": 3},
    {"hidden_size": 60, "num_attention_heads": 3, "head_dim": 8},
])
def test_parameter_budget_matches_transformers_parts(overrides):
    config = tiny_config(**overrides)
    with torch.device("meta"):
        model = ViTForImageClassification(config)
    assert parameter_budget(config) == parts_of_transformers_model(model)
    assert sum(parameter_budget(config).values()) == sum(p.numel() for p in model.parameters())


def test_standard_configs_match_published_sizes():
    published = {"ViT-Ti/16": 5.7e6, "ViT-S/16": 22e6, "ViT-B/16": 86e6, "ViT-L/16": 304e6}
    configs = standard_configs()
    assert list(configs) == list(published)
    for name, config in configs.items():
        with torch.device("meta"):
            total = sum(p.numel() for p in ViTForImageClassification(config).parameters())
        assert sum(parameter_budget(config).values()) == total
        assert abs(total - published[name]) / published[name] < 0.02, name


def test_plot_patch_grid_numbers_every_patch():
    figure = plot_patch_grid(torch.zeros(3, 32, 48, dtype=torch.uint8), 8)
    ax = figure.axes[0]
    assert len(ax.texts) == 4 * 6
    assert len(ax.lines) == (4 + 1) + (6 + 1)
    plt.close(figure)


def test_plot_token_cost_shows_quadratic_attention_and_marks_vit_b16():
    figure = plot_token_cost([224, 400, 448], patch_sizes=(16, 32), hidden_size=768)
    tokens_ax, cost_ax = figure.axes
    patch16, patch32 = tokens_ax.lines[:2]
    assert list(patch16.get_ydata()) == [197, 626, 785]
    assert list(patch32.get_xdata()) == [224, 448]  # 400 is not a multiple of 32
    attention_cost, mlp_cost = (line.get_ydata() for line in cost_ax.lines[:2])
    assert attention_cost[2] / attention_cost[0] > mlp_cost[2] / mlp_cost[0]
    for ax in (tokens_ax, cost_ax):
        assert [text.get_text().splitlines()[0] for text in ax.texts] == ["ViT-B/16 @224", "ViT-B/16 @384"]
    assert tokens_ax.texts[1].get_text().splitlines()[1] == "577"
    plt.close(figure)


def test_plot_parameter_budget_stacks_every_part():
    configs = {"tiny": tiny_config(), "wide": tiny_config(hidden_size=128)}
    figure = plot_parameter_budget(configs)
    bars = figure.axes[0].patches
    assert len(bars) == len(configs) * len(parameter_budget(tiny_config()))
    tops = [max(bar.get_y() + bar.get_height() for bar in bars if round(bar.get_x() + bar.get_width() / 2) == i)
            for i in range(len(configs))]
    assert tops == pytest.approx([sum(parameter_budget(c).values()) / 1e6 for c in configs.values()])
    plt.close(figure)


def test_transformers_names_cover_every_parameter_of_both_models():
    config = tiny_config(num_hidden_layers=3)
    hf_model, model = ViTForImageClassification(config), ScratchViT(config)
    names = transformers_names(config.num_hidden_layers)

    def covered(module, prefixes):
        return sorted(name for name, _ in module.named_parameters() if any(
            name == prefix or name.startswith(prefix + ".") for prefix in prefixes))

    assert covered(hf_model, names.values()) == sorted(name for name, _ in hf_model.named_parameters())
    assert covered(model, names) == sorted(name for name, _ in model.named_parameters())
    assert names["blocks.2.attention.query"] == "vit.layers.2.attention.q_proj"


def test_budget_table_lists_every_part_total_and_published_size():
    configs = standard_configs()
    lines = budget_table(configs).splitlines()
    assert lines[0].split() == ["part", *configs]
    assert len(lines) == 1 + len(parameter_budget(configs["ViT-B/16"])) + 2
    totals = lines[-2].split()[1:]
    assert totals == [f"{sum(parameter_budget(c).values()) / 1e6:.2f}M" for c in configs.values()]
    assert lines[-1].split()[1:] == ["5.7M", "22M", "86M", "304M"]
    small = budget_table({"mine": tiny_config()}).splitlines()
    assert small[-2].split() == ["total", f"{sum(parameter_budget(tiny_config()).values()) / 1e3:.2f}k"]
    assert small[-1].split() == ["published", "-"]


def labelled_by_model(model, count: int = 12) -> TensorImages:
    """Random uint8 images labelled with the model's own predictions at its native size."""
    torch.manual_seed(1)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        labels = model((images.float() / 255 - 0.5) / 0.5).logits.argmax(-1)
    return TensorImages(images, labels.tolist(), [str(i) for i in range(10)])


def test_accuracy_by_resolution_interpolates_position_embeddings():
    model = random_transformers_vit(tiny_config())
    dataset = labelled_by_model(model)
    spec = ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    results = accuracy_by_resolution(model, dataset, spec, [32, 48])
    assert list(results) == [32, 48]
    assert results[32] == 1.0  # the labels are the model's own answers at its native size
    resized = torch.nn.functional.interpolate(dataset.images.float(), size=(48, 48), mode="bilinear",
                                              antialias=True, align_corners=False).round().clamp(0, 255) / 255
    with torch.no_grad():
        predictions = model((resized - 0.5) / 0.5, interpolate_pos_encoding=True).logits.argmax(-1)
    assert results[48] == pytest.approx((predictions == torch.tensor(dataset.labels)).float().mean().item())


def test_small_cnn_classifies_any_image_size():
    model = small_cnn(num_classes=7, width=8)
    for size in (32, 48):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert sum(p.numel() for p in small_cnn(7, width=16).parameters()) > sum(p.numel() for p in model.parameters())


def test_show_code_renders_the_source_as_python_block():
    markdown = show_code(attention, MLP).data
    assert markdown.startswith("```python\ndef attention(")
    assert "class MLP(nn.Module):" in markdown and markdown.count("```") == 4


