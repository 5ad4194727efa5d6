"""Tests for helpers.freezing on a tiny randomly initialised ViT."""

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import freezing
from helpers.train import is_no_decay

DEPTH = 2
IMAGE_SIZE = 16


def tiny_config() -> ViTConfig:
    return ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )


@pytest.fixture
def model() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(tiny_config()).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def names(model):
    return [name for name, _ in model.named_parameters()]


def flags_match(model, trainable):
    return all(param.requires_grad == (name in trainable) for name, param in model.named_parameters())


# --- counting -----------------------------------------------------------------------------------


def test_count_parameters_counts_trainable_and_total(model):
    total = sum(p.numel() for p in model.parameters())
    assert freezing.count_parameters(model).trainable == total

    freezing.linear_probe(model)
    count = freezing.count_parameters(model)
    classifier = model.classifier.weight.numel() + model.classifier.bias.numel()
    assert (count.trainable, count.total) == (classifier, total)
    assert count.percent == pytest.approx(100 * classifier / total)
    assert f"{classifier:,} of {total:,}" in str(count)
    assert f"{count.percent:.2f}%" in str(count)


# --- strategies ---------------------------------------------------------------------------------


def test_linear_probe_trains_only_the_classifier(model):
    freezing.full_finetune(model)
    trainable = freezing.linear_probe(model)
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert flags_match(model, trainable)


@pytest.mark.parametrize("k", range(DEPTH + 1))
def test_freeze_first_blocks_freezes_embeddings_and_first_k_blocks(model, k):
    frozen_prefixes = ("vit.embeddings.", *(f"vit.layers.{i}." for i in range(k)))
    expected = [name for name in names(model) if not name.startswith(frozen_prefixes)]
    trainable = freezing.freeze_first_blocks(model, k)
    assert trainable == expected
    assert flags_match(model, trainable)
    assert "classifier.weight" in trainable and "vit.layernorm.weight" in trainable
    assert not any(name.startswith("vit.embeddings.") for name in trainable)


def test_freeze_all_blocks_leaves_final_layernorm_and_classifier(model):
    trainable = freezing.freeze_first_blocks(model, DEPTH)
    assert sorted(trainable) == sorted(
        ["vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"]
    )


@pytest.mark.parametrize("k", [DEPTH + 1, -1])
def test_freeze_first_blocks_rejects_k_outside_depth(model, k):
    with pytest.raises(ValueError, match=f"has {DEPTH} encoder blocks"):
        freezing.freeze_first_blocks(model, k)


def test_bitfit_trains_biases_layernorms_and_classifier(model):
    trainable = freezing.bitfit(model)
    expected = [
        name
        for name in names(model)
        if name.endswith(".bias") or "layernorm" in name or name.startswith("classifier.")
    ]
    assert trainable == expected
    assert flags_match(model, trainable)
    for frozen in ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "vit.layers.0.mlp.fc1.weight"]:
        assert frozen not in trainable


def test_full_finetune_trains_everything(model):
    freezing.linear_probe(model)
    assert freezing.full_finetune(model) == names(model)
    assert all(param.requires_grad for param in model.parameters())


def test_apply_strategy_dispatches_with_keywords(model):
    assert freezing.apply_strategy(model, "freeze_first_blocks", k=1) == freezing.freeze_first_blocks(model, 1)
    assert freezing.apply_strategy(model, "bitfit") == freezing.bitfit(model)


def test_apply_strategy_rejects_unknown_name_listing_choices(model):
    with pytest.raises(ValueError, match="Unknown freezing strategy 'lora_probe'") as error:
        freezing.apply_strategy(model, "lora_probe")
    assert all(choice in str(error.value) for choice in freezing.STRATEGIES)


# --- layer-wise LR decay ------------------------------------------------------------------------


def expected_llrd_lr(name, lr, decay):
    if name.startswith("vit.embeddings."):
        return lr * decay ** (DEPTH + 1)
    for i in range(DEPTH):
        if name.startswith(f"vit.layers.{i}."):
            return lr * decay ** (DEPTH - i)
    return lr


def test_llrd_groups_set_lr_per_layer_and_split_weight_decay(model):
    lr, decay, weight_decay = 1e-3, 0.5, 0.1
    groups = freezing.llrd_param_groups(model, lr, decay=decay, weight_decay=weight_decay)
    params = dict(model.named_parameters())

    grouped = [name for group in groups for name in group["names"]]
    assert sorted(grouped) == sorted(params)
    for group in groups:
        assert [id(p) for p in group["params"]] == [id(params[name]) for name in group["names"]]
        for name in group["names"]:
            assert group["lr"] == pytest.approx(expected_llrd_lr(name, lr, decay))
            assert group["weight_decay"] == (0.0 if is_no_decay(name, params[name]) else weight_decay)

    by_name = {group["name"]: group for group in groups}
    assert by_name["head"]["lr"] == lr
    assert by_name["block 1"]["lr"] == pytest.approx(lr * decay)
    assert by_name["embeddings (no decay)"]["lr"] == pytest.approx(lr * decay ** (DEPTH + 1))
    assert groups[0]["name"] == "head"
    assert [group["lr"] for group in groups] == sorted((group["lr"] for group in groups), reverse=True)


def test_llrd_groups_skip_frozen_parameters_and_feed_an_optimizer(model):
    trainable = freezing.freeze_first_blocks(model, 1)
    groups = freezing.llrd_param_groups(model, lr=1e-3)
    assert sorted(name for group in groups for name in group["names"]) == sorted(trainable)
    optimizer = torch.optim.AdamW(groups)
    assert freezing.optimizer_covers_only_trainable(optimizer, model)
    assert {group["name"] for group in optimizer.param_groups} >= {"head", "block 1"}


def test_llrd_rejects_decay_outside_unit_interval(model):
    with pytest.raises(ValueError, match="decay=1.5"):
        freezing.llrd_param_groups(model, lr=1e-3, decay=1.5)


# --- gradual unfreezing -------------------------------------------------------------------------


def test_gradual_unfreezing_adds_one_layer_per_stage_from_the_top(model):
    stages = freezing.gradual_unfreezing_stages(model, n_stages=DEPTH + 2, lr=1e-3, lr_decay=0.5)
    layer_order = [
        ("classifier.", "vit.layernorm."),
        *((f"vit.layers.{i}.",) for i in reversed(range(DEPTH))),
        ("vit.embeddings.",),
    ]
    unfrozen_prefixes = ()
    for stage, prefixes in zip(stages, layer_order, strict=True):
        unfrozen_prefixes += prefixes
        groups = stage.apply(model)
        trainable = freezing.trainable_names(model)
        assert trainable == [name for name in names(model) if name.startswith(unfrozen_prefixes)]
        assert sorted(name for group in groups for name in group["names"]) == sorted(trainable)
        lrs = [group["lr"] for group in groups]
        assert lrs == sorted(lrs, reverse=True) and lrs[0] == 1e-3
    assert freezing.trainable_names(model) == names(model)
    assert str(stages[0]) == "stage 0: train head"
    assert str(stages[1]) == f"stage 1: train head, block {DEPTH - 1}"


def test_gradual_unfreezing_with_two_stages_is_head_then_everything(model):
    first, last = freezing.gradual_unfreezing_stages(model, n_stages=2, lr=1e-3)
    first.apply(model)
    assert sorted(freezing.trainable_names(model)) == sorted(
        ["vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"]
    )
    last.apply(model)
    assert freezing.trainable_names(model) == names(model)


@pytest.mark.parametrize("n_stages", [1, DEPTH + 3])
def test_gradual_unfreezing_rejects_impossible_stage_counts(model, n_stages):
    with pytest.raises(ValueError, match=f"n_stages={n_stages}"):
        freezing.gradual_unfreezing_stages(model, n_stages=n_stages, lr=1e-3)


# --- frozen means frozen ------------------------------------------------------------------------


def train_steps(model, optimizer, images, steps=3):
    model.train()
    labels = torch.arange(len(images)) % model.config.num_labels
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixel_values=images, labels=labels).loss.backward()
        optimizer.step()


def test_frozen_parameters_stay_bit_identical_after_training(model, images):
    trainable = freezing.freeze_first_blocks(model, 1)
    frozen_before = freezing.snapshot(model)
    trainable_before = freezing.snapshot(model, trainable)
    assert sorted(frozen_before) == sorted(set(names(model)) - set(trainable))

    train_steps(model, torch.optim.AdamW(freezing.llrd_param_groups(model, lr=1e-2)), images)

    freezing.assert_unchanged(model, frozen_before)
    with pytest.raises(AssertionError, match="classifier.weight"):
        freezing.assert_unchanged(model, trainable_before)


def test_assert_unchanged_catches_a_single_bit_flip(model):
    saved = freezing.snapshot(model, ["vit.embeddings.cls_token"])
    with torch.no_grad():
        model.vit.embeddings.cls_token.view(-1)[0] = torch.nextafter(
            model.vit.embeddings.cls_token.view(-1)[0], torch.tensor(1.0)
        )
    with pytest.raises(AssertionError, match="cls_token"):
        freezing.assert_unchanged(model, saved)


def test_snapshot_rejects_unknown_names(model):
    with pytest.raises(ValueError, match="no parameters named"):
        freezing.snapshot(model, ["vit.encoder.layer.0.weight"])


def test_optimizer_covers_only_trainable(model):
    freezing.linear_probe(model)
    assert not freezing.optimizer_covers_only_trainable(torch.optim.AdamW(model.parameters()), model)
    assert not freezing.optimizer_covers_only_trainable(torch.optim.AdamW([model.classifier.weight]), model)
    trainable = [param for param in model.parameters() if param.requires_grad]
    assert freezing.optimizer_covers_only_trainable(torch.optim.AdamW(trainable), model)


# --- LoRA ---------------------------------------------------------------------------------------


def test_add_lora_trains_only_adapters_on_query_value_and_the_classifier(model):
    peft_model = freezing.add_lora(model, r=4, alpha=8)
    trainable = freezing.trainable_names(peft_model)
    adapters = [name for name in trainable if ".lora_" in name]
    assert len(adapters) == DEPTH * 2 * 2  # blocks x (q_proj, v_proj) x (A, B)
    assert all(".q_proj." in name or ".v_proj." in name for name in adapters)
    assert sorted(set(trainable) - set(adapters)) == [
        "base_model.model.classifier.modules_to_save.default.bias",
        "base_model.model.classifier.modules_to_save.default.weight",
    ]
    assert peft_model.peft_config["default"].r == 4
    assert 0 < freezing.count_parameters(peft_model).percent < 50


def perturb_lora(peft_model):
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name or ".modules_to_save." in name:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))


def test_merge_lora_gives_a_plain_model_with_the_same_logits(model, images, tmp_path):
    with torch.no_grad():
        base_logits = model(pixel_values=images).logits
    peft_model = freezing.add_lora(model)
    perturb_lora(peft_model)
    with torch.no_grad():
        lora_logits = peft_model(pixel_values=images).logits
    assert not torch.allclose(lora_logits, base_logits, atol=1e-3)

    merged = freezing.merge_lora(peft_model)
    assert type(merged) is ViTForImageClassification
    assert names(merged) == names(ViTForImageClassification(tiny_config()))
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=images).logits, lora_logits, atol=1e-5, rtol=1e-5)

    merged.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=images).logits, lora_logits, atol=1e-5, rtol=1e-5)
