import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, profiles, train

SPEC = data.ImageSpec((16, 16), (0.5,) * 3, (0.5,) * 3)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=2)
    return ViTForImageClassification(config)


def bright_or_dark(n, seed=0):
    """Class 0: dark noisy images, class 1: bright ones. Separable, so a working loop must learn it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 170, 60)
    noise = torch.randint(-50, 50, (n, 3, 16, 16), generator=generator)
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    return data.TensorImages(images, labels.tolist(), ["dark", "bright"], transform=data.to_model_input(SPEC))


SETTINGS = profiles.resolve("smoke", epochs=2, batch_size=16, lr=3e-3, warmup_ratio=0.0)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b, atol=0.0):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


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
        "model.safetensors", "training_state.pt", "rng-0.pt"}


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
