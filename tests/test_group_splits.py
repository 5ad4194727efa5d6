"""Group-aware splits (helpers.data.splits): near-duplicates and user-given groups never straddle two splits."""
import numpy as np
import pytest

from helpers import data
from helpers.data.photos import NearDuplicate


def test_merge_groups_follows_pairs_through_chains_and_user_groups():
    assert data.merge_groups(6, [(0, 1), (1, 2)]) == [0, 0, 0, 1, 2, 3]
    assert data.merge_groups(6, [NearDuplicate(4, 5, 3)], ["s1", "s2", "s1", "s3", "s4", "s2"]) == [0, 1, 0, 2, 1, 1]
    with pytest.raises(ValueError, match="one group per item"):
        data.merge_groups(3, [], ["a"])


def test_name_groups_reads_a_session_from_file_names():
    paths = ["p/cat/s1_001.jpg", "p/cat/s1_002.jpg", "p/dog/s1_001.jpg", "p/cat/IMG9.jpg"]
    assert data.name_groups(paths, r"^(\w+?)_") == ["cat/s1", "cat/s1", "dog/s1", "cat/IMG9.jpg"]


def random_groups(seed=0, classes=3, groups_per_class=7):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label in range(classes):
        for g in range(groups_per_class):
            size = int(rng.integers(1, 6))
            labels += [label] * size
            groups += [f"{label}-{g}"] * size
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_keeps_groups_whole_and_every_class_in_every_split(seed):
    labels, groups = random_groups(seed)
    parts = data.group_split(labels, groups, 0.15, 0.15, seed)
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    where = {i: k for k, part in enumerate(parts) for i in part}
    for group in set(groups):
        assert len({where[i] for i, g in enumerate(groups) if g == group}) == 1
    for part in parts:
        assert {labels[i] for i in part} == {0, 1, 2}
    assert data.group_split(labels, groups, 0.15, 0.15, seed) == parts
    assert data.pairs_across_splits([(i, j) for i in range(len(groups)) for j in range(i) if groups[i] == groups[j]],
                                    parts) == 0


def test_random_split_of_the_same_items_lets_groups_straddle():
    labels, groups = random_groups(0)
    parts = data.stratified_split(labels, 0.15, 0.15, 0)
    pairs = [(i, j) for i in range(len(groups)) for j in range(i) if groups[i] == groups[j]]
    assert data.pairs_across_splits(pairs, parts) > 0


def test_a_class_with_too_few_groups_is_named():
    labels = [0] * 9 + [1] * 4
    groups = [f"a{i}" for i in range(9)] + ["b0", "b0", "b1", "b1"]
    with pytest.raises(ValueError, match="Class 'dog' has 2 independent group"):
        data.group_split(labels, groups, 0.2, 0.2, 0, class_names=["cat", "dog"])


def test_group_split_dataset_returns_splits_of_the_dataset():
    dataset = data.load_digits().subset(range(300))
    groups = [f"{label}-{i // 4}" for i, label in enumerate(dataset.labels)]  # fours of one class belong together
    splits = data.group_split_dataset(dataset, groups, "digits in fours", seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 300 and splits.classes == dataset.classes
    assert len(splits.test) < len(splits.train) > len(splits.val)
