import copy
import dataclasses

import pytest
import torch
from tiny_training import SETTINGS, SPEC, bright_or_dark, same_weights, tiny_vit, weights

from helpers import data, models, profiles, train
from helpers.lessons import l05_training as l05


def test_soft_cross_entropy_equals_hard_for_one_hot_and_checks_shape():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert torch.allclose(train.cross_entropy(logits, labels), train.cross_entropy(logits, one_hot), atol=1e-6)
    with pytest.raises(ValueError, match="one probability per class"):
        train.cross_entropy(logits, torch.ones(5, 4) / 4)


def test_no_decay_rule_on_vit_parameter_names():
    model = tiny_vit()
    no_decay = {name for name, p in model.named_parameters() if train.is_no_decay(name, p)}
    assert "vit.embeddings.cls_token" in no_decay and "vit.embeddings.position_embeddings" in no_decay
    assert "vit.layers.0.layernorm_before.weight" in no_decay and "classifier.bias" in no_decay
    assert "classifier.weight" not in no_decay
    assert "vit.embeddings.patch_embeddings.projection.weight" not in no_decay


def test_parameter_groups_hold_exactly_the_trainable_parameters():
    model = tiny_vit()
    model.vit.embeddings.requires_grad_(False)
    groups = train.parameter_groups(model, weight_decay=0.1)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_warmup_then_cosine_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = train.warmup_cosine(optimizer, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == sorted(lrs[:5]) and max(lrs) == pytest.approx(1.0)
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_fit_learns_a_separable_task():
    model = tiny_vit()
    history = train.fit(model, bright_or_dark(96), bright_or_dark(32, seed=1), SETTINGS, epochs=4, progress=False)
    assert len(history) == 4 and history.rows[-1]["val_accuracy"] == 1.0
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    assert set(history.rows[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}


def test_same_seed_same_numbers():
    runs = []
    for _ in range(2):
        model = tiny_vit()
        history = train.fit(model, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, progress=False)
        runs.append(([{k: v for k, v in r.items() if k != "seconds"} for r in history.rows], weights(model)))
    assert runs[0][0] == runs[1][0] and same_weights(runs[0][1], runs[1][1])


def test_gradient_accumulation_matches_a_large_batch():
    results = []
    for batch_size, accumulation in ((16, 1), (4, 4)):
        model = tiny_vit()
        train.fit(model, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=1,
                  batch_size=batch_size, grad_accum=accumulation, progress=False)
        results.append(weights(model))
    assert not same_weights(results[0], weights(tiny_vit()))
    assert same_weights(results[0], results[1], atol=1e-5)


def test_soft_targets_from_a_batch_transform_train_like_labels():
    def one_hot(images, labels):
        return images, torch.nn.functional.one_hot(labels, 2).float()

    results = []
    for transform in (None, one_hot):
        model = tiny_vit()
        train.fit(model, bright_or_dark(32), bright_or_dark(16, seed=1), SETTINGS, epochs=1,
                  batch_transform=transform, progress=False)
        results.append(weights(model))
    assert same_weights(results[0], results[1], atol=1e-6)
    assert model.config.problem_type in (None, "single_label_classification")


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    uninterrupted = tiny_vit()
    full = train.fit(uninterrupted, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
                     progress=False)
    interrupted = tiny_vit()
    train.fit(interrupted, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
              checkpoint_dir=tmp_path, stop_after=1, progress=False)
    assert (tmp_path / "latest").read_text() == "epoch-0001"
    restarted = tiny_vit(seed=99)  # a fresh process: different weights until the checkpoint loads
    resumed = train.fit(restarted, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
                        checkpoint_dir=tmp_path, resume=True, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h.rows]  # noqa: E731
    assert strip(resumed) == strip(full)
    assert same_weights(weights(restarted), weights(uninterrupted))


def test_checkpoints_are_complete_and_only_the_last_is_kept(tmp_path):
    train.fit(tiny_vit(), bright_or_dark(32), bright_or_dark(16, seed=1), SETTINGS, epochs=2,
              checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "latest"]
    assert {p.name for p in (tmp_path / "epoch-0002").iterdir()} == {
        "model.safetensors", "training_state.pt", "rng-0.pt", "manifest.json"}


def test_bad_calls_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        train.fit(tiny_vit(), bright_or_dark(8), bright_or_dark(8), SETTINGS, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train.fit(tiny_vit(), bright_or_dark(8), bright_or_dark(8), SETTINGS, resume=True)
    with pytest.raises(ValueError, match="lr must be greater than 0"):
        train.fit(tiny_vit(), bright_or_dark(8), bright_or_dark(8), SETTINGS, lr=0)
    with pytest.raises(ValueError, match="at least one image"):
        train.fit(tiny_vit(), bright_or_dark(8).subset([]), bright_or_dark(8), SETTINGS)


def test_history_table_and_plot():
    history = train.History([dict(epoch=1, train_loss=1.0, val_loss=0.9, val_accuracy=0.5, lr=1e-3, seconds=2.0),
                             dict(epoch=2, train_loss=0.5, val_loss=0.6, val_accuracy=0.75, lr=5e-4, seconds=2.0)])
    assert history.best["epoch"] == 2 and "75.00%" in str(history)
    figure = history.plot()
    assert len(figure.axes) == 2 and len(figure.axes[0].lines) == 2


# ---------------------------------------------------------------- lesson 05: optimizers and schedules
def test_schedules_shapes_and_run_steps():
    steps = train.RunSteps(per_epoch=5, total=20, warmup=4)
    for schedule in train.SCHEDULES:
        curve = train.schedule_curve(schedule, 1.0, steps)
        assert len(curve) == 20 and curve[:5] == sorted(curve[:5]) and max(curve) == pytest.approx(1.0)
    assert train.schedule_curve("constant", 1.0, steps)[4:] == [1.0] * 16
    linear = train.schedule_curve("linear", 1.0, steps)[4:]
    assert linear[0] == pytest.approx(1.0) and all(
        a - b == pytest.approx(1 / 16) for a, b in zip(linear, linear[1:]))
    settings = profiles.resolve("smoke", batch_size=16, grad_accum=3, epochs=2, warmup_ratio=0.25)
    assert train.run_steps(100, settings) == train.RunSteps(per_epoch=3, total=6, warmup=2)  # 7 batches -> 3 steps
    assert train.run_steps(100, settings, num_processes=2).per_epoch == 2  # 4 batches per process
    figure = l05.plot_schedules(1e-3, steps)
    assert len(figure.axes[0].lines) == len(train.SCHEDULES)


def test_fit_follows_the_chosen_schedule_to_the_step():
    for schedule, last_lr in (("constant", SETTINGS.lr), ("linear", 0.0)):
        history = train.fit(tiny_vit(), bright_or_dark(48), bright_or_dark(16, seed=1), SETTINGS, epochs=2,
                            schedule=schedule, progress=False)
        assert history.rows[-1]["lr"] == pytest.approx(last_lr, abs=1e-12)


def test_sgd_with_momentum_is_the_vit_recipe_and_learns():
    optimizer = train.make_optimizer("sgd", train.parameter_groups(tiny_vit(), 0.0), lr=0.1)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    history = train.fit(tiny_vit(), bright_or_dark(96), bright_or_dark(32, seed=1), SETTINGS, epochs=4,
                        optimizer="sgd", lr=0.05, weight_decay=0.0, progress=False)
    assert history.rows[-1]["val_accuracy"] == 1.0


# ---------------------------------------------------------------- learning-rate finder
def test_lr_find_leaves_model_optimizer_and_random_state_as_they_were():
    model = tiny_vit()
    optimizer = torch.optim.AdamW(train.parameter_groups(model, 0.05), lr=1e-3)
    images, labels = next(iter(data.make_loader(bright_or_dark(16), 16)))
    train.cross_entropy(model(images).logits, labels).backward()
    optimizer.step()  # the optimizer now holds state (moments) worth keeping
    optimizer.zero_grad(set_to_none=True)
    model.vit.layers[0].eval()  # a mixed train/eval state must come back too
    before_weights, before_optimizer = weights(model), copy.deepcopy(optimizer.state_dict())
    modes = [m.training for m in model.modules()]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    finder = l05.lr_find(model, bright_or_dark(64), SETTINGS, optimizer=optimizer, num_steps=20, progress=False)

    assert len(finder.lrs) >= 2 and finder.lrs == sorted(finder.lrs)
    assert same_weights(weights(model), before_weights)
    after_optimizer = optimizer.state_dict()
    assert after_optimizer["param_groups"] == before_optimizer["param_groups"]
    assert all(torch.equal(after_optimizer["state"][i][key].cpu(), before_optimizer["state"][i][key].cpu())
               for i in before_optimizer["state"] for key in before_optimizer["state"][i])
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(3), expected_draw)


def test_lr_find_sweeps_geometrically_stops_on_divergence_and_suggests_below_the_minimum():
    finder = l05.lr_find(tiny_vit(), bright_or_dark(64), SETTINGS, start_lr=1e-5, end_lr=1e5, num_steps=40,
                           progress=False)
    ratios = [b / a for a, b in zip(finder.lrs, finder.lrs[1:])]
    assert ratios == pytest.approx([(1e10) ** (1 / 39)] * len(ratios))
    assert len(finder.lrs) < 40  # lr 1e5 blows the loss up long before the end
    assert min(finder.smoothed) < finder.smoothed[0]
    assert finder.suggestion == pytest.approx(finder.lr_at_min / 10)
    assert finder.smoothed[finder.lrs.index(finder.lr_at_min)] == min(finder.smoothed)
    assert len(finder.plot().axes[0].lines) == 4


# ---------------------------------------------------------------- gradient accumulation
def test_four_micro_batches_of_16_give_the_gradient_of_one_batch_of_64():
    model = tiny_vit()
    images, labels = next(iter(data.make_loader(bright_or_dark(64), 64)))
    whole = l05.gradients(model, images, labels)
    accumulated = l05.gradients(model, images, labels, micro_batches=4)
    assert whole.keys() == accumulated.keys() and len(whole) == len(list(model.parameters()))
    assert l05.max_difference(whole, accumulated) < 1e-6
    first_quarter = l05.gradients(model, images[:16], labels[:16])
    assert l05.max_difference(whole, first_quarter) > 1e-4  # one micro-batch alone is not the same
    assert all(p.grad is None for p in model.parameters()) and model.training
    with pytest.raises(ValueError, match="micro_batches"):
        l05.gradients(model, images, labels, micro_batches=0)


# ---------------------------------------------------------------- early stopping and the best epoch
def scripted_validation(monkeypatch, accuracies):
    """Make fit() see these validation accuracies, epoch after epoch."""
    scores = iter(accuracies)
    monkeypatch.setattr(train.loop, "validate", lambda model, loader, accelerator: (1.0, next(scores)))


def test_early_stopping_waits_patience_epochs_after_the_best(monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.8, 0.8, 0.7, 0.9, 0.9])
    history = train.fit(tiny_vit(), bright_or_dark(32), bright_or_dark(8, seed=1), SETTINGS, epochs=6, patience=2,
                        progress=False)
    assert len(history) == 4 and history.stopped_early and history.best["epoch"] == 2
    assert "stopped early" in str(history)
    scripted_validation(monkeypatch, [0.5, 0.6, 0.7])
    assert not train.fit(tiny_vit(), bright_or_dark(32), bright_or_dark(8, seed=1), SETTINGS, epochs=3, patience=1,
                         progress=False).stopped_early


def test_restore_best_ends_with_the_best_epochs_weights_also_after_a_resume(monkeypatch, tmp_path):
    args = (bright_or_dark(32), bright_or_dark(8, seed=1), SETTINGS)
    scripted_validation(monkeypatch, [0.5, 0.9, 0.6, 0.7])
    after_two = tiny_vit()
    train.fit(after_two, *args, epochs=4, stop_after=2, progress=False)
    scripted_validation(monkeypatch, [0.5, 0.9, 0.6, 0.7])
    restored = tiny_vit()
    train.fit(restored, *args, epochs=4, restore_best=True, checkpoint_dir=tmp_path / "a", progress=False)
    assert same_weights(weights(restored), weights(after_two))
    assert (tmp_path / "a" / "best" / "model.safetensors").exists()

    scripted_validation(monkeypatch, [0.5, 0.9, 0.6, 0.7])
    train.fit(tiny_vit(), *args, epochs=4, stop_after=3, restore_best=True, checkpoint_dir=tmp_path / "b",
              progress=False)
    resumed = tiny_vit(seed=5)
    train.fit(resumed, *args, epochs=4, resume=True, restore_best=True, checkpoint_dir=tmp_path / "b",
              progress=False)
    assert same_weights(weights(resumed), weights(after_two))


# ---------------------------------------------------------------- the GPU input path, at CPU scale
def test_prepare_batch_without_augmentation_is_the_evaluation_transform():
    images = bright_or_dark(6).images
    same_size = train.prepare_batch(images, SPEC)
    assert torch.allclose(same_size, torch.stack([data.to_model_input(SPEC)(i) for i in images]), atol=1e-6)
    bigger = data.ImageSpec((24, 24), (0.5,) * 3, (0.5,) * 3)
    resized = train.prepare_batch(images, bigger, dtype=torch.bfloat16)
    assert resized.shape == (6, 3, 24, 24) and resized.dtype == torch.bfloat16
    reference = torch.stack([data.eval_transform(bigger)(i) for i in images])
    assert (resized.float() - reference).abs().max() < 0.05  # bf16 and the uint8 rounding of v2.Resize


def test_augmentation_draws_crop_and_flip_per_sample():
    image = bright_or_dark(1).images[0]
    image[:, :, :8] = 0  # left half dark: a flip is visible
    batch = image.expand(64, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    flips_only = train.prepare_batch(batch, SPEC, augment=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    plain, mirrored = train.prepare_batch(batch[:1], SPEC), train.prepare_batch(batch[:1].flip(-1), SPEC)
    is_plain = (flips_only - plain).abs().amax((1, 2, 3)) < 1e-4
    is_mirrored = (flips_only - mirrored).abs().amax((1, 2, 3)) < 1e-4
    assert torch.all(is_plain ^ is_mirrored) and 10 < int(is_mirrored.sum()) < 54
    never_flipped = train.prepare_batch(batch, SPEC, augment=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                        flip=False)
    assert (never_flipped - plain).abs().max() < 1e-4
    cropped = train.prepare_batch(batch, data.ImageSpec((40, 40), SPEC.mean, SPEC.std), augment=True)
    assert cropped.shape == (64, 3, 40, 40)
    assert len({tuple(c.flatten()[:200].tolist()) for c in cropped}) == 64  # 64 different draws


def test_device_images_train_through_fit_and_match_their_source():
    source = bright_or_dark(96)
    device_train = train.DeviceImages.from_dataset(source, SPEC, augment=True, crop_scale=(0.8, 1.0))
    device_val = train.DeviceImages.from_dataset(bright_or_dark(32, seed=1), SPEC)
    on_gpu = device_val.images.device.type == "cuda"
    assert device_train.images.dtype == torch.uint8
    assert device_val.dtype == (torch.bfloat16 if on_gpu else torch.float32)
    images, labels = device_val.batch([3, 0])
    expected = bright_or_dark(32, seed=1)[3][0]
    assert torch.allclose(images[0].float().cpu(), expected, atol=2e-2 if on_gpu else 1e-6)
    assert labels.tolist() == [1, 0]
    history = train.fit(tiny_vit(), device_train, device_val, SETTINGS, epochs=4, progress=False)
    assert history.rows[-1]["val_accuracy"] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        train.DeviceImages(source.images.float(), source.labels, SPEC)
    with pytest.raises(ValueError, match="one label per image"):
        train.DeviceImages(source.images, source.labels[:5], SPEC)


def test_throughput_measure_leaves_the_model_alone_and_memory_grows_with_the_batch():
    model = tiny_vit()
    before = weights(model)
    dataset = train.DeviceImages.from_dataset(bright_or_dark(64), SPEC)
    small, large = (train.measure_training_throughput(model, dataset, SETTINGS, batch_size=b, steps=2,
                                                      warmup_steps=1) for b in (4, 16))
    assert same_weights(weights(model), before)
    assert small.images_per_second > 0 and (small.peak_gpu_mib is None) == (not torch.cuda.is_available())
    assert 3 < large.saved_for_backward_mib / small.saved_for_backward_mib < 5
    assert len(l05.plot_throughput([small, large]).axes) == 2
    assert l05.throughput_table([small, large]).count("\n| ") == 2


def test_training_flops_of_vit_b16_match_the_published_count():
    from transformers import ViTConfig

    assert models.training_flops_per_image(ViTConfig()) == pytest.approx(105.5e9, rel=0.002)


def test_compiled_fit_saves_plain_checkpoints(tmp_path):
    model = tiny_vit()
    train.fit(model, bright_or_dark(32), bright_or_dark(8, seed=1), SETTINGS, epochs=1, torch_compile="eager",
              checkpoint_dir=tmp_path, progress=False)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "epoch-0001" / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()


# ---------------------------------------------------------------- transformers.Trainer, the kit's way
def test_trainer_equivalent_learns_and_never_passes_labels_to_the_model(tmp_path):
    model = tiny_vit()
    model.register_forward_pre_hook(
        lambda module, args, kwargs: pytest.fail("labels= reached the model") if "labels" in kwargs else None,
        with_kwargs=True)
    history = l05.fit_with_trainer(model, bright_or_dark(96), bright_or_dark(32, seed=1), SETTINGS, tmp_path,
                                     epochs=4, progress=False)
    assert history.column("epoch") == [1, 2, 3, 4] and history.rows[-1]["val_accuracy"] == 1.0
    assert not model.training
    table = l05.side_by_side({"fit": history, "Trainer": history})
    assert table.count("\n") == 5 and "| 4 | 1.0000 | 1.0000 |" in table


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("override, message", [
    (dict(lr=0), "lr must be greater than 0"),
    (dict(lr=-1e-3), "lr must be greater than 0"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(grad_accum=0), "grad_accum must be at least 1"),
    (dict(optimizer="adam"), "Unknown optimizer 'adam'"),
    (dict(schedule="cosine"), "Unknown schedule 'cosine'"),
    (dict(patience=0), "patience must be at least 1"),
])
def test_bad_training_settings_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_vit(), bright_or_dark(8), bright_or_dark(8), SETTINGS, progress=False, **override)


@pytest.mark.parametrize("override, message", [
    (dict(lr=0), "lr must be greater than 0"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(start_lr=1.0, end_lr=1e-3), "start_lr < end_lr"),
    (dict(num_steps=1), "num_steps must be at least 2"),
])
def test_bad_lr_find_settings_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        l05.lr_find(tiny_vit(), bright_or_dark(8), SETTINGS, progress=False, **override)


def test_gradient_checkpointing_through_fit_recomputes_the_same_training():
    settings = dataclasses.replace(SETTINGS, epochs=1)
    plain, checkpointed = tiny_vit(), tiny_vit()
    train.fit(plain, bright_or_dark(32), bright_or_dark(8, seed=1), settings, progress=False)
    train.fit(checkpointed, bright_or_dark(32), bright_or_dark(8, seed=1),
              dataclasses.replace(settings, gradient_checkpointing=True), progress=False)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())  # switched on
    assert same_weights(weights(plain), weights(checkpointed), atol=1e-5)  # the same steps, recomputed
    assert not same_weights(weights(plain), weights(tiny_vit()))
