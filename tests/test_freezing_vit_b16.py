"""The freezing helpers on the gpu profile's architecture, ViT-B/16 (12 blocks, 768 wide), built on the meta
device: shapes and names without memory. Twelve blocks matter: `layers.1.` must not also match `layers.10.`.

Counts by hand for 10 classes: embeddings 768 (CLS) + 197 x 768 (positions) + 16 x 16 x 3 x 768 + 768
(patch projection) = 742,656; a block 4 x (768 x 768 + 768) + 2 x 768 x 3,072 + 3,072 + 768 + 2 x 2 x 768
= 7,087,872; the head 2 x 768 (final layernorm) + 768 x 10 + 10 = 9,226.
"""
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import freezing

EMBEDDINGS, BLOCK, HEAD = 742_656, 7_087_872, 9_226
TOTAL = EMBEDDINGS + 12 * BLOCK + HEAD


@pytest.fixture
def vit_b16():
    with torch.device("meta"):
        return ViTForImageClassification(ViTConfig(num_labels=10))


def test_the_architecture_is_vit_b16(vit_b16):
    assert freezing.depth_of(vit_b16) == 12
    assert freezing.count_parameters(vit_b16) == freezing.ParameterCount(TOTAL, TOTAL) and TOTAL == 85_806_346
    counts = freezing.parameters_by_layer(vit_b16)
    assert list(counts) == ["embeddings", *(f"block {i}" for i in range(12)), "head"]
    assert [c.total for c in counts.values()] == [EMBEDDINGS, *[BLOCK] * 12, HEAD]


def test_every_parameter_is_in_its_own_layer_also_past_block_nine(vit_b16):
    for name, _ in vit_b16.named_parameters():
        layer = freezing.layer_id(name, 12)
        if name.startswith("vit.layers."):
            assert layer == int(name.split(".")[2]) + 1, name
        elif name.startswith("vit.embeddings."):
            assert layer == 0, name
        else:
            assert layer == 13 and name.split(".")[0] in ("classifier", "vit"), name
    assert [freezing.layer_name(layer, 12) for layer in (0, 1, 10, 11, 12, 13)] == [
        "embeddings", "block 0", "block 9", "block 10", "block 11", "head"]


@pytest.mark.parametrize("k", [0, 1, 2, 9, 10, 11, 12])
def test_freezing_the_first_k_blocks_trains_exactly_the_rest(vit_b16, k):
    trainable = freezing.freeze_first_blocks(vit_b16, k)
    assert freezing.count_parameters(vit_b16).trainable == (12 - k) * BLOCK + HEAD
    blocks = {int(name.split(".")[2]) for name in trainable if name.startswith("vit.layers.")}
    assert blocks == set(range(k, 12))
    assert {"vit.layernorm.weight", "classifier.bias"} <= set(trainable)
    assert not any(name.startswith("vit.embeddings.") for name in trainable)
    shares = freezing.trainable_share_by_layer(vit_b16)
    assert [shares[f"block {i}"] for i in range(12)] == [0.0] * k + [1.0] * (12 - k) and shares["head"] == 1.0


def test_linear_probe_bitfit_and_full_finetune_counts(vit_b16):
    freezing.linear_probe(vit_b16)
    assert freezing.count_parameters(vit_b16).trainable == 768 * 10 + 10
    freezing.bitfit(vit_b16)
    per_block_biases_and_norms = 4 * 768 + 3_072 + 768 + 2 * 2 * 768
    assert freezing.count_parameters(vit_b16).trainable == 12 * per_block_biases_and_norms + 768 + HEAD
    freezing.full_finetune(vit_b16)
    assert freezing.count_parameters(vit_b16).trainable == TOTAL


def test_strategies_by_name(vit_b16):
    assert freezing.apply_strategy(vit_b16, "freeze_first_blocks", k=11) == freezing.trainable_names(vit_b16)
    assert freezing.count_parameters(vit_b16).trainable == BLOCK + HEAD
    with pytest.raises(ValueError) as error:
        freezing.apply_strategy(vit_b16, "lora")
    assert str(error.value) == ("Unknown freezing strategy 'lora': choose one of linear_probe, freeze_first_blocks, "
                                "bitfit, full_finetune.")


def test_layerwise_lr_decay_over_fourteen_layers(vit_b16):
    freezing.freeze_first_blocks(vit_b16, 10)  # blocks 10 and 11 and the head train
    groups = freezing.llrd_param_groups(vit_b16, lr=1e-3, decay=0.5, weight_decay=0.05)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("head", 1e-3, 0.05), ("head (no decay)", 1e-3, 0.0),
        ("block 11", 5e-4, 0.05), ("block 11 (no decay)", 5e-4, 0.0),
        ("block 10", 2.5e-4, 0.05), ("block 10 (no decay)", 2.5e-4, 0.0),
    ]
    assert sum(p.numel() for g in groups for p in g["params"]) == 2 * BLOCK + HEAD
    everything = freezing.llrd_param_groups(vit_b16.requires_grad_(True), lr=1.0, decay=0.5)
    assert everything[-1]["name"] == "embeddings (no decay)" and everything[-1]["lr"] == 0.5**13
    assert len(everything) == 2 * 14


def test_gradual_unfreezing_of_twelve_blocks_in_four_stages(vit_b16):
    stages = freezing.gradual_unfreezing_stages(vit_b16, n_stages=4, lr=1e-3)
    assert [stage.lowest_layer for stage in stages] == [13, 9, 5, 0]  # 13 layers below the head, in thirds
    assert str(stages[1]) == "stage 1: train head, block 11, block 10, block 9, block 8"
    stages[2].apply(vit_b16)
    assert freezing.count_parameters(vit_b16).trainable == 8 * BLOCK + HEAD
    stages[3].apply(vit_b16)
    assert freezing.count_parameters(vit_b16).trainable == TOTAL
