"""Tests for helpers.freezing on a tiny randomly initialised ViT."""

import dataclasses
import re
import time
import warnings

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, freezing, profiles, train
from helpers.lessons import l02_freezing as l02
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
    with pytest.raises(ValueError, match=r"^decay=0 must be in \(0, 1\]: each layer down trains at `decay` times"):
        freezing.llrd_param_groups(model, lr=1e-3, decay=0)


def test_llrd_with_decay_one_trains_every_layer_at_the_same_lr_and_decays_weights_by_005(model):
    groups = freezing.llrd_param_groups(model, lr=1e-3, decay=1)
    assert {group["lr"] for group in groups} == {1e-3}
    assert {group["weight_decay"] for group in groups} == {0.0, 0.05}  # the default weight decay


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
    sentence = (f"n_stages={n_stages} is out of range: with {DEPTH} encoder blocks choose from 2 (head, then all) "
                f"to {DEPTH + 2} (one layer per stage).")
    with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
        freezing.gradual_unfreezing_stages(model, n_stages=n_stages, lr=1e-3)


def test_each_stage_passes_its_lr_decay_and_weight_decay_to_its_groups(model):
    last = freezing.gradual_unfreezing_stages(model, n_stages=2, lr=1e-3, lr_decay=0.5, weight_decay=0.1)[-1]
    groups = {group["name"]: group for group in last.apply(model)}
    assert groups["block 1"]["lr"] == pytest.approx(1e-3 * 0.5)
    assert groups["embeddings (no decay)"]["lr"] == pytest.approx(1e-3 * 0.5 ** (DEPTH + 1))
    assert {group["weight_decay"] for group in groups.values()} == {0.0, 0.1}
    default = freezing.gradual_unfreezing_stages(model, n_stages=2, lr=1e-3)[-1]
    assert (default.lr_decay, default.weight_decay) == (freezing.DEFAULT_LR_DECAY, 0.05)


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


def test_add_lora_passes_rank_alpha_and_dropout_to_peft_and_stays_quiet(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft's deprecation warning is silenced, and nothing else is raised
        defaults = freezing.add_lora(model).peft_config["default"]
        chosen = freezing.add_lora(ViTForImageClassification(tiny_config()), r=4, alpha=8, dropout=0.1)
    assert (defaults.r, defaults.lora_alpha, defaults.lora_dropout) == (8, 16, 0.0)
    chosen = chosen.peft_config["default"]
    assert (chosen.r, chosen.lora_alpha, chosen.lora_dropout) == (4, 8, 0.1)


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


# --- layers, memory, recipes, the comparison ----------------------------------------------------

SETTINGS = profiles.resolve("smoke", epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0)
SPEC = data.ImageSpec((IMAGE_SIZE, IMAGE_SIZE), (0.5,) * 3, (0.5,) * 3)


def tiny_images(n=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    labels = [i % 3 for i in range(n)]
    return data.TensorImages(images, labels, ["a", "b", "c"], transform=data.to_model_input(SPEC))


def load_tiny():
    return ViTForImageClassification(tiny_config())


def test_parameters_by_layer_adds_up_and_follows_the_strategy(model):
    freezing.freeze_first_blocks(model, 1)
    by_layer = freezing.parameters_by_layer(model)
    assert list(by_layer) == ["embeddings", "block 0", "block 1", "head"]
    assert sum(c.total for c in by_layer.values()) == freezing.count_parameters(model).total
    assert sum(c.trainable for c in by_layer.values()) == freezing.count_parameters(model).trainable
    assert freezing.trainable_share_by_layer(model) == {"embeddings": 0.0, "block 0": 0.0, "block 1": 1.0, "head": 1.0}
    freezing.linear_probe(model)
    assert 0 < freezing.trainable_share_by_layer(model)["head"] < 1  # the final layernorm stays frozen


def test_plot_trainable_map_draws_one_row_per_strategy(model):
    shares = {"probe": freezing.trainable_share_by_layer(model)}
    freezing.linear_probe(model)
    shares["linear"] = freezing.trainable_share_by_layer(model)
    image = l02.plot_trainable_map(shares).axes[0].images[0]
    assert image.get_array().shape == (2, DEPTH + 2)


def test_peak_memory_sees_a_large_allocation():
    with l02.PeakMemory() as memory:
        block = torch.ones(2**24, device=train.default_device())  # 64 MB, every page touched
        del block
    assert memory.mb > 40
    assert "RSS" in memory.method or "CUDA" in memory.method


def test_activation_memory_shrinks_with_freezing(model, images):
    labels = torch.arange(len(images)) % 3
    measured = {}
    for name, strategy in [("probe", freezing.linear_probe), ("top", lambda m: freezing.freeze_first_blocks(m, 1)),
                           ("full", freezing.full_finetune)]:
        strategy(model)
        measured[name] = l02.activation_mb_per_image(model, images, labels)
    assert 0 < measured["probe"] < measured["top"] < measured["full"]
    assert all(param.grad is None for param in model.parameters())


@pytest.mark.parametrize("epochs, parts, expected", [(15, 3, [5, 5, 5]), (7, 3, [2, 2, 3]), (2, 2, [1, 1])])
def test_split_epochs_shares_out_every_epoch(epochs, parts, expected):
    assert l02.split_epochs(epochs, parts) == expected


def test_split_epochs_rejects_fewer_epochs_than_stages():
    with pytest.raises(ValueError, match="1 epoch"):
        l02.split_epochs(1, 3)


def test_default_recipes_prepare_their_strategies(model):
    recipes = {recipe.name: recipe for recipe in l02.default_recipes(DEPTH, lora_rank=4)}
    assert len(recipes) == 7
    prepared = recipes["freeze emb + 1 blocks"].prepare(model)
    assert prepared is model and freezing.trainable_names(model) == freezing.freeze_first_blocks(model, 1)
    assert recipes["linear probe"].lr_scale > 1 and recipes["full fine-tune"].lr_scale == 1
    lora = recipes["LoRA r=4"].prepare(load_tiny())
    assert lora.peft_config["default"].r == 4


def test_run_recipe_measures_and_proves_frozen_parameters():
    recipe = l02.Recipe("probe", lambda m: (freezing.linear_probe(m), m)[1], lr_scale=2)
    result = l02.run_recipe(recipe, load_tiny, tiny_images(), tiny_images(9, seed=1), SETTINGS, progress=False)
    assert (result.strategy, result.backbone, len(result.history)) == ("probe", "pretrained", SETTINGS.epochs)
    assert result.trainable == sum(p.numel() for p in result.model.classifier.parameters())
    assert result.trainable_percent == pytest.approx(100 * result.trainable / result.total)
    assert result.frozen_tensors_checked == len(names(result.model)) - 2
    assert result.val_accuracy == result.history.rows[-1]["val_accuracy"]
    assert result.seconds_per_epoch > 0 and result.cpu_seconds_per_epoch > 0 and result.activation_mb_per_image > 0


def test_run_recipe_checks_only_what_stays_frozen_when_layers_thaw():
    recipe = l02.Recipe("gradual", lambda m: (freezing.freeze_first_blocks(m, DEPTH), m)[1], unfreeze_stages=2)
    result = l02.run_recipe(recipe, load_tiny, tiny_images(), tiny_images(9, seed=1), SETTINGS, progress=False)
    assert result.frozen_tensors_checked == 0 and result.trainable == result.total
    assert result.history.column("epoch") == [1, 2]


def test_run_recipe_fails_when_a_frozen_parameter_moves(monkeypatch):
    def leaky_fit(model, *args, **kwargs):
        with torch.no_grad():
            model.vit.embeddings.cls_token.add_(1.0)
        return freezing.History([dict(epoch=1, train_loss=0.0, val_loss=0.0, val_accuracy=0.5, lr=0.0, seconds=0.1)])

    monkeypatch.setattr(l02, "fit", leaky_fit)
    recipe = l02.Recipe("probe", lambda m: (freezing.linear_probe(m), m)[1])
    with pytest.raises(AssertionError, match="cls_token"):
        l02.run_recipe(recipe, load_tiny, tiny_images(), tiny_images(9), SETTINGS, progress=False)


def test_llrd_recipe_gives_fit_decayed_groups_at_the_scaled_lr(monkeypatch):
    calls = []
    monkeypatch.setattr(l02, "fit", lambda *args, **kwargs: calls.append(kwargs) or freezing.History())
    model = load_tiny()
    l02.Recipe("llrd", lambda m: m, lr_scale=2, llrd_decay=0.5).train(model, None, None, SETTINGS)
    (kwargs,) = calls
    lr = SETTINGS.lr * 2
    assert kwargs["lr"] == lr
    by_name = {group["name"]: group["lr"] for group in kwargs["param_groups"]}
    assert by_name["head"] == lr and by_name["block 0"] == pytest.approx(lr * 0.5**DEPTH)


def test_gradual_unfreezing_recipe_trains_in_stages_and_ends_with_everything(monkeypatch):
    stages = []

    def fake_fit(model, *args, epochs, param_groups, **kwargs):
        stages.append((epochs, len(freezing.trainable_names(model))))
        return freezing.History([dict(epoch=e + 1, val_accuracy=0.0, seconds=0.0) for e in range(epochs)])

    monkeypatch.setattr(l02, "fit", fake_fit)
    model = load_tiny()
    recipe = l02.Recipe("gradual", lambda m: m, unfreeze_stages=3)
    history = recipe.train(model, None, None, dataclasses.replace(SETTINGS, epochs=4))
    assert [epochs for epochs, _ in stages] == [1, 1, 2]
    assert [count for _, count in stages] == sorted(count for _, count in stages)
    assert stages[-1][1] == len(names(model)) and history.column("epoch") == [1, 2, 3, 4]


def test_compare_strategies_and_its_table_and_plot():
    recipes = [l02.Recipe("probe", lambda m: (freezing.linear_probe(m), m)[1]),
               l02.Recipe("full", lambda m: (freezing.full_finetune(m), m)[1])]
    settings = dataclasses.replace(SETTINGS, epochs=1)
    results = l02.compare_strategies(recipes, load_tiny, tiny_images(), tiny_images(9), settings)
    results += l02.compare_strategies(recipes[:1], load_tiny, tiny_images(), tiny_images(9), settings,
                                           backbone="random init")
    assert [(r.strategy, r.backbone) for r in results] == [
        ("probe", "pretrained"), ("full", "pretrained"), ("probe", "random init")]
    assert results[0].trainable < results[1].trainable == results[1].total
    table = l02.results_table(results, {"pixels": 0.5})
    assert table.count("\n") == 2 + len(results) and "| pixels | control |" in table and "50.0%" in table
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())
    figure = l02.plot_comparison(results, {"pixels": 0.5})
    assert len(figure.axes) == 2 and len(figure.axes[0].patches) == 4  # 2 strategies x 2 backbones


def test_describe_regime_follows_the_numbers():
    def result(strategy, backbone, accuracy):
        return l02.RunResult(strategy, backbone, 1, 1, 0.0, 0.0, 0.0, 0.0, accuracy, 0, freezing.History(), None)

    results = [result("full fine-tune", "pretrained", 0.98), result("full fine-tune", "random init", 0.77)]
    weak = l02.describe_regime(results, pixel_accuracy=0.96, probe_accuracy=0.90)
    strong = l02.describe_regime(results, pixel_accuracy=0.40, probe_accuracy=0.95)
    assert "Raw pixels" in weak and "backbone itself has to adapt" in weak and "98.0% from the checkpoint" in weak
    assert "Frozen features beat raw pixels" in strong and "Pretraining pays" in strong
    results[0].val_accuracy = 0.5
    assert "Pretraining did not help" in l02.describe_regime(results, 0.4, 0.95)


# --- the fast linear probe and the controls -----------------------------------------------------


def test_cache_features_is_what_the_classifier_sees(model):
    dataset = tiny_images(10)
    cached = freezing.cache_features(model, dataset, batch_size=4, progress=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(cached.features), model(pixel_values=images).logits)
    assert cached.labels.tolist() == dataset.labels and len(cached) == 10
    feature, label = cached[3]
    assert feature.shape == (16,) and label == dataset.labels[3]


def test_fast_linear_probe_matches_training_through_the_frozen_model():
    train_set, val_set = tiny_images(24), tiny_images(9, seed=1)
    torch.manual_seed(0)
    slow, fast = load_tiny(), load_tiny()
    fast.load_state_dict(slow.state_dict())
    frozen_before = freezing.snapshot(fast, [n for n in names(fast) if not n.startswith("classifier.")])

    freezing.linear_probe(slow)
    slow_history = freezing.fit(slow, train_set, val_set, SETTINGS, progress=False)
    probe = freezing.fast_linear_probe(fast, train_set, val_set, SETTINGS, progress=False)

    freezing.assert_unchanged(fast, frozen_before)
    assert freezing.trainable_names(fast) == ["classifier.weight", "classifier.bias"]
    torch.testing.assert_close(fast.classifier.weight, slow.classifier.weight, atol=1e-5, rtol=1e-4)
    assert probe.history.column("val_accuracy") == slow_history.column("val_accuracy")
    assert probe.seconds >= probe.feature_seconds > 0
    assert len(probe.train_features) == 24 and len(probe.val_features) == 9


def test_fast_linear_probe_shows_only_the_feature_passes_times_them_and_passes_overrides_to_fit(capsys):
    started = time.perf_counter()
    probe = freezing.fast_linear_probe(load_tiny(), tiny_images(24), tiny_images(9, seed=1), SETTINGS, epochs=1)
    assert 0 < probe.feature_seconds < time.perf_counter() - started
    assert probe.history.column("epoch") == [1]  # SETTINGS has 2
    lines = capsys.readouterr().out.splitlines()  # headless: one final line per bar
    assert [line.split(" in ")[0] for line in lines] == ["features: 1/1", "features: 1/1"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run by bench/gpu_check.py's suite stage")
def test_fast_linear_probe_computes_the_features_on_the_gpu():
    model = load_tiny()
    probe = freezing.fast_linear_probe(model, tiny_images(24), tiny_images(9, seed=1), SETTINGS, progress=False)
    assert {parameter.device.type for parameter in model.parameters()} == {"cuda"}
    assert len(probe.train_features) == 24


def test_fast_linear_probe_without_progress_draws_no_bar(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)  # live bars, as in a terminal: the head's epochs would show
    freezing.fast_linear_probe(load_tiny(), tiny_images(24), tiny_images(9, seed=1), SETTINGS, progress=False)
    assert capsys.readouterr() == ("", "")


def test_pixel_matrix_and_logistic_regression_on_separable_data():
    dataset = tiny_images(30)
    pixels = l02.pixel_matrix(dataset)
    assert pixels.shape == (30, 3 * IMAGE_SIZE * IMAGE_SIZE) and 0 <= pixels.min() and pixels.max() <= 1
    labels = np.arange(60) % 2
    points = np.random.default_rng(0).normal(size=(60, 5)) + 4 * labels[:, None]
    assert l02.logistic_regression_accuracy(points[:40], labels[:40], points[40:], labels[40:]) == 1.0
    assert l02.logistic_regression_accuracy(points[:40], labels[:40], points[40:], 1 - labels[40:]) == 0.0


