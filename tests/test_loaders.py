"""helpers.data.loaders: class weights by hand, the balanced sampler's weights and draws, the DataLoader's options."""
import re

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

from helpers.data import loaders


def test_class_weights_are_n_over_classes_times_count():
    weights = loaders.class_weights([0, 0, 0, 1])
    assert weights.dtype == torch.float32 and weights.tolist() == pytest.approx([4 / 6, 2.0])
    assert float((weights[torch.tensor([0, 0, 0, 1])]).mean()) == pytest.approx(1.0)  # one per image on average
    assert loaders.class_weights(torch.tensor([1, 1, 0])).tolist() == pytest.approx([1.5, 0.75])
    assert loaders.class_weights(np.array([0.0, 1.0, 1.0, 1.0])).tolist() == pytest.approx([2.0, 2 / 3])


def test_class_weights_with_the_class_count_given():
    assert loaders.class_weights([0, 1, 1], num_classes=2).tolist() == pytest.approx([1.5, 0.75])
    message = "Class(es) [2, 3] have no images, so they cannot be weighted: drop them or add images."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        loaders.class_weights([0, 1, 1], num_classes=4)
    message = "Class(es) [0] have no images, so they cannot be weighted: drop them or add images."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        loaders.class_weights([1, 1])


def test_class_weights_need_labels():
    for empty in ([], np.array([], dtype=int), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="^" + re.escape("Class weights need at least one label.") + "$"):
            loaders.class_weights(empty)
    assert loaders.class_weights([0]).tolist() == [1.0]


def test_weighted_sampler_weighs_each_image_by_one_over_its_class_size():
    sampler = loaders.weighted_sampler([0, 1, 1, 1, 2, 2])
    assert sampler.weights.dtype == torch.float64
    assert sampler.weights.tolist() == pytest.approx([1, 1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2])
    assert sampler.num_samples == 6 and sampler.replacement is True and sampler.generator is None
    assert loaders.weighted_sampler([0.0, 1.0, 1.0]).weights.tolist() == pytest.approx([1, 0.5, 0.5])


def test_weighted_sampler_draws_every_class_about_equally_and_follows_its_generator():
    labels = [0] * 90 + [1] * 10
    draws = list(loaders.weighted_sampler(labels, num_samples=3000, generator=torch.Generator().manual_seed(0)))
    share = np.mean(np.asarray(labels)[draws] == 1)
    assert len(draws) == 3000 and 0.45 < share < 0.55
    again = list(loaders.weighted_sampler(labels, num_samples=3000, generator=torch.Generator().manual_seed(0)))
    assert again == draws
    assert len(set(draws[:50])) < 50  # with replacement: the ten rare images come back


def test_weighted_sampler_needs_labels():
    with pytest.raises(ValueError, match="^" + re.escape("A weighted sampler needs at least one label.") + "$"):
        loaders.weighted_sampler([])
    assert list(loaders.weighted_sampler([3])) == [0]


DATA = TensorDataset(torch.arange(10).float(), torch.arange(10))


def test_an_evaluation_loader_reads_in_order_with_no_workers():
    loader = loaders.make_loader(DATA, 4)
    assert loader.batch_size == 4 and loader.num_workers == 0 and isinstance(loader.sampler, SequentialSampler)
    assert loader.pin_memory == torch.cuda.is_available() and loader.persistent_workers is False
    assert [labels.tolist() for _, labels in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_training_loader_shuffles_with_its_generator():
    generator = torch.Generator().manual_seed(0)
    loader = loaders.make_loader(DATA, 5, shuffle_generator=generator)
    assert isinstance(loader.sampler, RandomSampler) and loader.sampler.generator is generator
    order = [int(i) for _, labels in loader for i in labels]
    assert sorted(order) == list(range(10)) and order != list(range(10))


def test_a_sampler_decides_the_order_and_excludes_a_shuffle_generator():
    sampler = loaders.weighted_sampler([0, 1] * 5)
    assert loaders.make_loader(DATA, 2, sampler=sampler).sampler is sampler
    message = "Give either a shuffle_generator or a sampler, not both: the sampler decides the order."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        loaders.make_loader(DATA, 2, sampler=sampler, shuffle_generator=torch.Generator())


@pytest.mark.parametrize("num_workers, persistent_workers, expected", [
    (1, None, True), (2, None, True), (0, None, False),  # workers persist between epochs when there are any
    (2, False, False), (0, True, False), (1, True, True), (2, True, True),
])
def test_workers_persist_only_when_there_are_workers(num_workers, persistent_workers, expected):
    loader = loaders.make_loader(DATA, 2, num_workers=num_workers, persistent_workers=persistent_workers)
    assert loader.num_workers == num_workers and loader.persistent_workers is expected


def test_pin_memory_can_be_asked_for_or_refused():
    assert loaders.make_loader(DATA, 2, pin_memory=True).pin_memory is True
    assert loaders.make_loader(DATA, 2, pin_memory=False).pin_memory is False
