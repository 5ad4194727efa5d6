import dataclasses

import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers.utils import logging as transformers_logging

from helpers import data, profiles
from helpers.data import ImageSpec, TensorImages, augment, eval_transform
from helpers.lessons import l04_augmentation as l04

HALF = (0.5, 0.5, 0.5)
NON_SQUARE = ImageSpec(size=(24, 40), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
UPSAMPLING = ImageSpec(size=(64, 64), mean=HALF, std=HALF)


def random_image(h=32, w=32, seed=0) -> tv_tensors.Image:
    generator = torch.Generator().manual_seed(seed)
    return tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator))


@pytest.mark.parametrize("preset", augment.PRESETS)
@pytest.mark.parametrize("spec, source", [(NON_SQUARE, (30, 45)), (UPSAMPLING, (32, 32))])
def test_every_preset_gives_float32_of_spec_size(preset, spec, source):
    torch.manual_seed(0)
    image = random_image(*source)
    for magnitude in (0.0, 0.5, 1.0):
        aug = augment.build(preset, spec, magnitude, num_classes=10)
        for transform in (aug.train_transform, aug.eval_transform):
            out = transform(image)
            assert out.dtype == torch.float32
            assert tuple(out.shape) == (3, *spec.size)


def test_train_and_eval_share_the_normalisation():
    image = random_image()
    expected = eval_transform(UPSAMPLING)(image)
    none = augment.build("none", UPSAMPLING)
    assert torch.equal(none.train_transform(image), expected)
    # At magnitude 0 the crop is the whole image, so basic = eval up to the flip.
    basic = augment.build("basic", UPSAMPLING, magnitude=0)
    flipped = eval_transform(UPSAMPLING)(v2.functional.horizontal_flip(image))
    for _ in range(5):
        out = basic.train_transform(image)
        assert torch.allclose(out, expected, atol=1e-5) or torch.allclose(out, flipped, atol=1e-5)


def test_strong_erases_after_normalisation():
    # With mean = std = 0.5 no uint8 value normalises to exactly 0, so exact zeros can only
    # come from RandomErasing(value=0) running on the normalised tensor.
    torch.manual_seed(0)
    image = random_image()
    strong = augment.build("strong", UPSAMPLING, magnitude=1.0, num_classes=10).train_transform
    zeros = [int((strong(image) == 0).all(0).sum()) for _ in range(20)]
    assert max(zeros) >= 0.02 * 64 * 64
    mild = augment.build("strong", UPSAMPLING, magnitude=0.0, num_classes=10).train_transform
    assert all(int((mild(image) == 0).sum()) == 0 for _ in range(5))


def test_batch_transform_only_for_strong():
    for preset in augment.PRESETS:
        aug = augment.build(preset, NON_SQUARE, num_classes=10)
        assert (aug.batch_transform is not None) == (preset == "strong")
        assert aug.name == preset
    assert augment.build("strong", NON_SQUARE, magnitude=0, num_classes=10).batch_transform is None


def test_magnitude_one_is_the_standard_imagenet_crop():
    default = v2.RandomResizedCrop(8)
    s = augment.strengths(1.0)
    assert s.crop_scale == pytest.approx(default.scale)
    assert s.crop_ratio == pytest.approx(default.ratio)


@pytest.mark.parametrize("alphas", [(0.8, 1.0), (1.0, 0.0), (0.0, 1.0)])
def test_mix_batch_gives_soft_targets_matching_the_images(alphas):
    torch.manual_seed(0)
    mix = augment.mix_batch(10, alpha_mixup=alphas[0], alpha_cutmix=alphas[1])
    images, labels = torch.rand(6, 3, 16, 20), torch.arange(6)
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (6, 10)
    assert targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert l04.check_labels_valid(mix, num_classes=10)


def test_mix_batch_rejects_uint8_images():
    mix = augment.mix_batch(10)
    with pytest.raises(TypeError, match="float images"):
        mix(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4))


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=10, alpha_mixup=0, alpha_cutmix=0),
                                    dict(num_classes=10, alpha_mixup=-1)])
def test_mix_batch_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        augment.mix_batch(**kwargs)


def test_mix_batch_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        augment.mix_batch(3)(torch.rand(2, 3, 8, 8), torch.tensor([0, 3]))


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError) as error:
        augment.build("extreme", NON_SQUARE)
    assert all(name in str(error.value) for name in augment.PRESETS)


@pytest.mark.parametrize("magnitude", [-0.1, 1.5, "high"])
def test_magnitude_out_of_range_names_the_range(magnitude):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        augment.build("basic", NON_SQUARE, magnitude)


def test_strong_without_num_classes_says_what_to_pass():
    with pytest.raises(ValueError, match="num_classes"):
        augment.build("strong", NON_SQUARE)


def test_batch_call_repeats_one_draw_while_per_sample_calls_differ():
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(16, scale=(0.1, 0.5))
    batch_level, per_sample = l04.same_draw_demo(crop, random_image(), n=6)
    assert batch_level.shape == per_sample.shape == (6, 3, 16, 16)
    assert l04.count_distinct(batch_level) == 1
    assert l04.count_distinct(per_sample) == 6


def test_dataloader_gives_each_image_its_own_draw():
    torch.manual_seed(0)
    same_image = random_image().unsqueeze(0).repeat(6, 1, 1, 1)
    dataset = TensorImages(same_image, [0] * 6, ["a"])
    train = augment.build("basic", UPSAMPLING, magnitude=1.0).train_transform
    images, _ = next(iter(DataLoader(dataset.with_transform(train), batch_size=6)))
    assert l04.count_distinct(images) == 6


def test_cutmix_box_covers_one_minus_lam_of_the_image():
    generator = torch.Generator().manual_seed(0)
    for h, w in ((32, 32), (24, 40)):
        for lam in torch.rand(10, generator=generator).tolist():
            x1, y1, x2, y2 = augment.cutmix_box(h, w, lam, generator)
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert abs((x2 - x1) * (y2 - y1) - (1 - lam) * h * w) <= h + w
    assert l04.check_cutmix_box(augment.cutmix_box)


def test_gallery_has_augmix_and_color_jitter_on_uint8():
    torch.manual_seed(0)
    gallery = l04.gallery_transforms(NON_SQUARE)
    assert {"AugMix", "color jitter"} <= set(gallery)
    for transform in gallery.values():
        out = transform(random_image(30, 45))
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, *NON_SQUARE.size)


def test_plot_augmentations_grid_shows_true_colours():
    images = [random_image(seed=i) for i in range(3)]
    spec = ImageSpec((32, 32), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    none = augment.build("none", spec)
    fig = l04.plot_augmentations(images, {"none": none.train_transform}, n=2, spec=spec)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["original", "none"]
    shown = torch.as_tensor(fig.axes[2].images[0].get_array()).permute(2, 0, 1)
    assert torch.allclose(shown, images[0].float() / 255, atol=1e-5)


CLASSES = [str(d) for d in range(10)]


def titles_of(fig):
    return [ax.get_title() for ax in fig.axes if ax.images]


def test_target_title_names_hard_and_soft_targets():
    assert l04.target_title(torch.tensor(3), CLASSES) == "3"
    soft = torch.zeros(10)
    soft[[2, 7]] = torch.tensor([0.25, 0.75])
    assert l04.target_title(soft, CLASSES) == "7:0.75 2:0.25"
    assert l04.target_title(torch.nn.functional.one_hot(torch.tensor(4), 10).float(), CLASSES) == "4"


def test_plot_batch_titles_each_image_with_its_target():
    images, labels = torch.rand(5, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4])
    fig = l04.plot_batch(images, labels, CLASSES, n=4)
    assert titles_of(fig) == ["0", "1", "2", "3"]


def test_preview_figure_shows_fresh_draws_and_mixed_labels():
    torch.manual_seed(0)
    images, labels = [random_image(seed=i) for i in range(4)], [0, 1, 2, 3]
    none = l04.preview_figure(images, labels, UPSAMPLING, CLASSES, "none", draws=2)
    assert len([ax for ax in none.axes if ax.images]) == 2 * 4
    first, second = (torch.as_tensor(ax.images[0].get_array()) for ax in none.axes[0:5:4])
    assert torch.equal(first, second)  # no augmentation: every draw is the same picture
    strong = l04.preview_figure(images, labels, UPSAMPLING, CLASSES, "strong", magnitude=1.0, draws=3)
    titles = titles_of(strong)
    assert len(titles) == 3 * 4 and any(" " in title for title in titles)  # some images hold two classes
    assert "strong, magnitude 1" in strong.get_suptitle()


def test_preview_headless_draws_the_initial_choice_once(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    calls = []

    def fake_figure(images, labels, spec, class_names, preset, magnitude, draws):
        calls.append((preset, magnitude))
        return Figure()

    monkeypatch.setattr(l04, "preview_figure", fake_figure)
    assert l04.preview([random_image()], [0], UPSAMPLING, CLASSES, preset="basic", magnitude=0.3) is None
    assert calls and set(calls) == {("basic", 0.3)}
    assert "static view" in capsys.readouterr().out


def test_dataloader_workers_give_each_image_its_own_draw():
    same_image = random_image().unsqueeze(0).repeat(8, 1, 1, 1)
    dataset = TensorImages(same_image, [0] * 8, ["a"])
    train = augment.build("basic", UPSAMPLING, magnitude=1.0).train_transform
    loader = DataLoader(dataset.with_transform(train), batch_size=4, num_workers=2)
    images = torch.cat([batch for batch, _ in loader])
    assert l04.count_distinct(images) == 8


def digit_like_splits(n=40, classes=("dark", "bright")):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % len(classes)
    images = (labels.view(-1, 1, 1, 1) * 150 + torch.randint(0, 100, (n, 3, 32, 32), generator=generator))
    images = TensorImages(images.to(torch.uint8), labels.tolist(), list(classes))
    third = n // 3
    return data.Splits(images.subset(range(third, n)), images.subset(range(third)), images.subset(range(third)),
                       list(classes), "made up")


def test_loader_throughput_counts_images_per_second():
    dataset = digit_like_splits(40).train.with_transform(eval_transform(UPSAMPLING))
    assert l04.loader_throughput(dataset, batch_size=8) > 0
    with pytest.raises(ValueError, match="more than one batch"):
        l04.loader_throughput(dataset, batch_size=len(dataset))
    rates = l04.throughput_by_preset(dataset, UPSAMPLING, ("none", "strong"), batch_size=8)
    assert list(rates) == ["none", "strong"] and all(rate > 0 for rate in rates.values())


SMOKE = profiles.resolve("smoke", epochs=1, batch_size=8)


def test_ablation_trains_each_preset_and_seed_from_the_same_start(tiny_model_dir):
    splits = digit_like_splits(36)
    settings = dataclasses.replace(SMOKE, model_name=str(tiny_model_dir), dataset_name="digits")
    verbosity = transformers_logging.get_verbosity()
    result = l04.run_ablation(splits, settings, ("none", "strong"), seeds=2, long_presets=("none",), progress=False)
    assert transformers_logging.get_verbosity() == verbosity  # load reports are silenced only while loading
    assert result.arms() == [("none", 1), ("strong", 1), ("none", 2)] and not result.flip  # digits: no mirror
    assert [(run.seed, len(run.history)) for run in result.runs] == [(0, 1), (1, 1), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert all(0 <= run.test_accuracy <= 1 for run in result.runs)
    table = result.table()
    assert "| none | 1 |" in table and "| strong | 1 |" in table and "| none | 2 |" in table and "(rule: ±" in table
    assert [len(ax.lines) for ax in result.plot().axes][1] == 3  # one mean validation curve per arm
    again = l04.run_ablation(splits, settings, ("none",), seeds=1, long_presets=(), progress=False)
    assert again.runs[0].history.column("val_loss") == result.runs[0].history.column("val_loss")
    assert again.runs[0].test_accuracy == result.runs[0].test_accuracy


@pytest.mark.parametrize("presets, magnitude", [(("none", "extreme"), 0.5), (("none",), 2.0)])
def test_ablation_rejects_bad_choices_before_training(presets, magnitude):
    settings = dataclasses.replace(SMOKE, model_name="/no/such/model")
    with pytest.raises(ValueError):
        l04.run_ablation(digit_like_splits(), settings, presets, magnitude, progress=False)
