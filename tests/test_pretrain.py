"""Fractal generator, pretraining recipe, and the bundled tiny ViT checkpoint."""
import numpy as np
import pytest
import torch

from helpers.pretrain import (
    DEFAULT_OUT,
    FractalRecipe,
    fill_ratio,
    fractal_datasets,
    jitter_maps,
    largest_singular_values,
    main,
    render,
    render_instances,
    sample_categories,
    sample_category,
    stack_categories,
)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread, and do not stall when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sampled_maps_are_contractive_and_counted_as_asked():
    generator = rng()
    for _ in range(50):
        maps = sample_category(generator, n_maps=(2, 3))
        assert maps.shape[1] == 6 and 2 <= len(maps) <= 3
        assert largest_singular_values(maps).max() < 1


def test_jitter_keeps_maps_contractive_and_varies_them():
    category = sample_category(rng())
    jittered = jitter_maps(category, 40, rng(1), jitter=0.5)
    assert jittered.shape == (40, *category.shape)
    assert largest_singular_values(jittered).max() < 1
    assert not np.allclose(jittered[0], jittered[1])


def test_render_is_deterministic_for_a_seed():
    ifs = stack_categories([sample_category(rng(s)) for s in range(3)])
    first, again, other = (render(ifs, 2000, 16, rng(seed)) for seed in (7, 7, 8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_render_draws_many_images_at_once_in_range():
    ifs = stack_categories([sample_category(rng(s)) for s in range(5)])
    images = render(ifs, 3000, 24, rng())
    assert images.shape == (5, 24, 24) and images.dtype == np.float32
    assert images.min() >= 0
    np.testing.assert_allclose(images.max(axis=(1, 2)), 1.0)


def test_padding_maps_are_never_chosen():
    category = sample_category(rng(), n_maps=(2, 2))
    padded = np.concatenate([category, np.zeros((2, 6))])
    np.testing.assert_array_equal(render(category[None], 1000, 16, rng(3)), render(padded[None], 1000, 16, rng(3)))


def test_render_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        render(np.zeros((3, 6)), 100, 16, rng())


def test_fill_ratio_counts_lit_pixels():
    image = np.zeros((1, 4, 4))
    image[0, :2, :] = 0.3
    assert fill_ratio(image)[0] == pytest.approx(0.5)


def test_fill_filter_keeps_only_categories_in_range():
    kept = sample_categories(6, rng(), fill=(0.35, 0.5), n_points=3000, image_size=16)
    ratios = fill_ratio(render(stack_categories(kept), 3000, 16, rng(1)))
    assert len(kept) == 6
    assert ratios.min() > 0.3 and ratios.max() < 0.55  # a new drawing of the same IFS: a little noise
    with pytest.raises(ValueError, match="widen fill"):
        sample_categories(1, rng(), fill=(0.999, 1.0), n_points=500, image_size=16, max_tries=64)


def test_instances_are_uint8_images_that_differ():
    images = render_instances(sample_category(rng()), 8, rng(), n_points=2000, image_size=16)
    assert images.shape == (8, 16, 16) and images.dtype == np.uint8
    assert images.max() == 255 and not np.array_equal(images[0], images[1])


def test_datasets_hold_out_instances_of_every_category():
    recipe = FractalRecipe(categories=3, instances=10, holdout=0.2, n_points=1000, image_size=16)
    train, val = fractal_datasets(recipe, progress=False)
    assert (len(train), len(val)) == (24, 6)
    assert sorted(set(val.labels)) == [0, 1, 2]
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8


def test_main_writes_a_loadable_hugging_face_checkpoint(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    main(["--out", str(tmp_path), "--epochs", "1", "--categories", "3", "--instances", "12"])
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert model.config.num_labels == 3 and processor.size == {"height": 32, "width": 32}


# ---------------------------------------------------------------- the bundled checkpoint
def test_bundled_checkpoint_loads_offline_and_is_small():
    from transformers import AutoModelForImageClassification

    size = sum(f.stat().st_size for f in DEFAULT_OUT.iterdir())
    assert size <= 10 * 2**20
    model = AutoModelForImageClassification.from_pretrained(DEFAULT_OUT, local_files_only=True)
    logits = model(torch.zeros(2, 3, 32, 32)).logits
    assert logits.shape == (2, model.config.num_labels)


def test_short_fine_tune_from_bundled_checkpoint_beats_random_init():
    from helpers.data import ImageSpec, load_dataset, to_model_input
    from helpers.models import load_model
    from helpers.profiles import resolve
    from helpers.train import fit

    splits = load_dataset("digits", seed=0, train_size=100, eval_size=100)
    settings = resolve("smoke", epochs=3, batch_size=20, lr=2e-3, seed=0)
    accuracy = {}
    for random_init in (True, False):
        torch.manual_seed(0)
        model, processor = load_model("tiny-vit", splits.classes, random_init=random_init)
        transform = to_model_input(ImageSpec.from_processor(processor))
        train, val = splits.train.with_transform(transform), splits.val.with_transform(transform)
        accuracy[random_init] = fit(model, train, val, settings, progress=False).rows[-1]["val_accuracy"]
    assert accuracy[False] > accuracy[True] + 0.2, accuracy
