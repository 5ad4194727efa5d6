"""Group-aware splits (helpers.data.splits): near-duplicates and user-given groups never straddle two splits."""
import re

import numpy as np
import pytest
import torch

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


def test_name_groups_without_a_parenthesised_part_takes_the_whole_match():
    paths = ["p/cat/s12_001.jpg", "p/cat/s12_002.jpg", "p/cat/s3_001.jpg", "p/dog/IMG9.jpg"]
    assert data.name_groups(paths, r"^s\d+") == ["cat/s12", "cat/s12", "cat/s3", "dog/IMG9.jpg"]


def test_pairs_across_splits_counts_near_duplicates_and_plain_pairs():
    parts = ([0, 1], [2], [3, 4])
    near = [NearDuplicate(0, 1, 2), NearDuplicate(0, 2, 5), NearDuplicate(3, 1, 0), NearDuplicate(4, 3, 1)]
    assert data.pairs_across_splits(near, parts) == 2
    assert data.pairs_across_splits(near + [(2, 4), [1, 0]], parts) == 3


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


FRACTIONS_SENTENCE = "val_fraction and test_fraction must be in (0, 1) and sum to less than 1."


@pytest.mark.parametrize("val_fraction, test_fraction", [
    (0.0, 0.2), (0.2, 0.0), (-0.1, 0.2), (0.2, -0.1), (0.5, 0.5), (0.6, 0.6), (0.3, 0.8),
])
def test_group_split_refuses_bad_fractions_with_the_whole_sentence(val_fraction, test_fraction):
    labels, groups = random_groups(0)  # 7 groups a class: any of these fractions would deal them out
    with pytest.raises(ValueError, match="^" + re.escape(FRACTIONS_SENTENCE) + "$"):
        data.group_split(labels, groups, val_fraction, test_fraction, 0)


def test_group_split_refuses_groups_that_do_not_match_the_labels():
    with pytest.raises(ValueError, match="^" + re.escape("Give one group per item: 2 groups for 3 labels.") + "$"):
        data.group_split([0, 1, 2], ["a", "b"], 0.2, 0.2, 0)


def too_few_groups_sentence(name):
    return (f"Class {name} has 2 independent group(s) of photos (near-duplicates and photos of one group count "
            "once): it needs at least 3 so train, val and test each get one; add photos of it from other scenes "
            "or sessions, or leave the class out.")


def test_a_class_with_too_few_groups_is_named_by_its_label_without_class_names():
    labels = [0] * 9 + [1] * 4
    groups = [f"a{i}" for i in range(9)] + ["b0", "b0", "b1", "b1"]
    with pytest.raises(ValueError, match="^" + re.escape(too_few_groups_sentence("1")) + "$"):
        data.group_split(labels, groups, 0.2, 0.2, 0)
    with pytest.raises(ValueError, match="^" + re.escape(too_few_groups_sentence("'dog'")) + "$"):
        data.group_split(labels, groups, 0.2, 0.2, 0, class_names=["cat", "dog"])


def test_a_group_goes_with_its_majority_class_and_three_groups_give_one_to_each_split():
    labels = [0, 0, 1, 0, 0, 1, 1, 1]
    groups = ["a", "a", "a", "b", "c", "d", "e", "f"]  # "a": two of class 0, one of class 1
    assert data.group_split(labels, groups, 0.15, 0.15, seed=0) == ([3, 5], [0, 1, 2, 6], [4, 7])
    assert data.group_split(labels, groups, 0.15, 0.15, seed=1) == ([4, 6], [3, 5], [0, 1, 2, 7])


def groups_per_split(labels, groups, parts):
    """{class: (train, val, test) numbers of groups}."""
    counts = {label: [0, 0, 0] for label in set(labels)}
    for k, part in enumerate(parts):
        for group in {groups[i] for i in part}:
            counts[labels[groups.index(group)]][k] += 1
    return {label: tuple(count) for label, count in counts.items()}


def groups_of(counts):
    labels, groups = [], []
    for label, count in enumerate(counts):
        for g in range(count):
            labels += [label] * (1 + g % 3)
            groups += [f"{label}-{g}"] * (1 + g % 3)
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1])
def test_group_split_deals_out_the_fractions_of_each_class_groups(seed):
    labels, groups = groups_of([7, 20, 3])
    parts = data.group_split(labels, groups, 0.15, 0.15, seed)
    # 7 groups: round(1.05) = 1 each to test and val; 20: round(3.0) = 3; 3: at least one each
    assert groups_per_split(labels, groups, parts) == {0: (5, 1, 1), 1: (14, 3, 3), 2: (1, 1, 1)}


def test_group_split_keeps_one_group_of_each_class_for_train_when_val_asks_for_more():
    labels, groups = groups_of([4, 4])
    parts = data.group_split(labels, groups, 0.7, 0.25, 0)  # val would take round(2.8) = 3 of the 4 groups
    assert groups_per_split(labels, groups, parts) == {0: (1, 2, 1), 1: (1, 2, 1)}
    labels, groups = groups_of([3, 3])
    parts = data.group_split(labels, groups, 0.5, 0.4, 0)  # val would take round(1.5) = 2 of the 3 groups
    assert groups_per_split(labels, groups, parts) == {0: (1, 1, 1), 1: (1, 1, 1)}


def test_group_split_dataset_is_group_split_of_its_labels_with_the_seed_and_source():
    dataset = data.load_digits().subset(range(300))
    groups = [f"{label}-{i // 4}" for i, label in enumerate(dataset.labels)]
    for seed in (0, 1):
        splits = data.group_split_dataset(dataset, groups, "digits in fours", seed=seed)
        parts = data.group_split(dataset.labels, groups, 0.15, 0.15, seed)
        for split, part in zip((splits.train, splits.val, splits.test), parts):
            assert split.labels == [dataset.labels[i] for i in part]
            assert torch.equal(split.images, dataset.images[part])
        assert splits.source == "digits in fours" and splits.classes == dataset.classes


def test_group_split_dataset_names_a_short_class_by_its_name():
    dataset = data.load_digits().subset(range(300))
    groups = [f"{label}-{i // 4}" if label != 3 else f"3-{i % 2}" for i, label in enumerate(dataset.labels)]
    with pytest.raises(ValueError, match="^" + re.escape(too_few_groups_sentence("'3'")) + "$"):
        data.group_split_dataset(dataset, groups, "digits", seed=0)
