"""Train / validation / test splits (lessons 03 and 07): stratified and seeded, checked for leaks across splits;
group-aware, so near-duplicates and photos of one session never straddle two splits."""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from helpers.data.folders import file_hash
from helpers.data.images import FileImages, LabeledImages

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    """Train, validation and test sets of one dataset, with its class names (lesson 03)."""

    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    classes: list[str]
    source: str = ""
    stand_in: bool = False  # generated stand-in data (`prefetch --stand-in`): accuracy on it means nothing

    def with_transforms(self, train, eval=None) -> "Splits":
        """The splits with `train` applied to the training set and `eval` (default: `train`) to the others."""
        eval = eval or train
        return replace(self, train=self.train.with_transform(train), val=self.val.with_transform(eval),
                       test=self.test.with_transform(eval))

    def __str__(self) -> str:
        return (f"{self.source}: {len(self.classes)} classes; train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)} images")


def stratified_split(labels, val_fraction: float, test_fraction: float, seed: int):
    """Indices (train, val, test): seeded, stratified by label, disjoint, covering every item (lesson 03)."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    labels = np.asarray(labels)
    val_size, test_size = (_count_of(fraction, len(labels)) for fraction in (val_fraction, test_fraction))
    rest, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=labels[rest], random_state=seed)
    return sorted(train), sorted(val), sorted(test)


def _count_of(fraction: float, total: int) -> int:
    """`fraction` of `total` items as a count, rounded up like sklearn's split sizes, without float noise
    (0.07 * 100 is 7.000000000000001, which must stay 7)."""
    return math.ceil(round(fraction * total, 9))


def stratified_subset(dataset: LabeledImages, size: int | None, seed: int) -> LabeledImages:
    """At most `size` items of `dataset`, keeping the class balance (None: all of it) (lesson 03)."""
    if size is None or size >= len(dataset):
        return dataset
    classes = len(set(dataset.labels))
    if size < classes:
        raise ValueError(f"A subset of {size} images cannot hold all {classes} classes: ask for more.")
    left_out = len(dataset) - size
    if left_out < classes:  # too few to leave one of each class out, as sklearn's stratified draw would
        labels = np.asarray(dataset.labels)
        largest = np.argsort(-np.bincount(labels), kind="stable")[:left_out]
        rng = np.random.default_rng(seed)
        dropped = {int(rng.choice(np.flatnonzero(labels == label))) for label in largest}
        return dataset.subset([i for i in range(len(dataset)) if i not in dropped])
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=size, stratify=dataset.labels, random_state=seed)
    return dataset.subset(sorted(keep))


def split_dataset(dataset: LabeledImages, source: str, seed: int, val_fraction=0.15, test_fraction=0.15) -> Splits:
    """`dataset` split 70/15/15 by `stratified_split` into `Splits` (lesson 03)."""
    train, val, test = stratified_split(dataset.labels, val_fraction, test_fraction, seed)
    return Splits(dataset.subset(train), dataset.subset(val), dataset.subset(test), dataset.classes, source)


@dataclass
class Leak:
    """One item found in two splits: by the same file, or by identical content under another name (lesson 03)."""

    kind: str
    first: str
    second: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.first} and {self.second}"


@dataclass
class LeakageReport:
    """The leaks between train, val and test, and how many items each split holds (lesson 03)."""

    leaks: list[Leak]
    sizes: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.leaks

    def __str__(self) -> str:
        checked = ", ".join(f"{name} {size}" for name, size in self.sizes.items())
        if self.ok:
            return f"no leaks: no file and no identical content in two splits ({checked})"
        lines = [f"{len(self.leaks)} leak(s) between splits ({checked}):"]
        lines += [f"  {leak}" for leak in self.leaks[:10]]
        if len(self.leaks) > 10:
            lines.append(f"  ... and {len(self.leaks) - 10} more")
        return "\n".join(lines)


def content_hash(dataset: LabeledImages, index: int) -> str:
    """sha256 of item `index`: its file's bytes for images on disk, its pixels (and shape) otherwise (lesson 03)."""
    if isinstance(dataset, FileImages):
        return file_hash(dataset.paths[index])
    image = dataset.image(index).contiguous()
    return hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest()


def find_leaks(splits: Splits) -> LeakageReport:
    """Every item of val or test that is also in an earlier split: the same file, or the same content (lesson 03)."""
    first_seen: dict[tuple[str, str], str] = {}
    leaks = []
    for split_name in SPLIT_NAMES:
        dataset = getattr(splits, split_name)
        for index in range(len(dataset)):
            item = describe_item(split_name, dataset, index)
            keys = [("same file", str(dataset.paths[index].resolve()))] if isinstance(dataset, FileImages) else []
            keys.append(("same content", content_hash(dataset, index)))
            for kind, key in keys:
                seen = first_seen.setdefault((kind, key), item)
                if not seen.startswith(split_name + " "):
                    leaks.append(Leak(kind, seen, item))
                    break
    return LeakageReport(leaks, {name: len(getattr(splits, name)) for name in SPLIT_NAMES})


def describe_item(split_name: str, dataset: LabeledImages, index: int) -> str:
    """A short description of item `index` of a split, for a leak report (lesson 03)."""
    if isinstance(dataset, FileImages):
        return f"{split_name} {Path(*dataset.paths[index].parts[-2:])}"
    return f"{split_name} #{index}"


def class_counts(dataset: LabeledImages) -> np.ndarray:
    """Images per class, in class order (zeros included) (lesson 03)."""
    return np.bincount(dataset.labels, minlength=len(dataset.classes))


def merge_groups(count: int, pairs=(), groups=None) -> list[int]:
    """Group ids for `count` items: items linked by a pair (e.g. near-duplicates), directly or through others,
    or sharing a user-given group (same person, same session) get the same id (lesson 07)."""
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    links = [(pair.first, pair.second) if hasattr(pair, "first") else tuple(pair) for pair in pairs]
    if groups is not None:
        if len(groups) != count:
            raise ValueError(f"Give one group per item: {len(groups)} groups for {count} items.")
        first_of: dict = {}
        links += [(first_of.setdefault(group, item), item) for item, group in enumerate(groups)]
    for first, second in links:
        parent[root(first)] = root(second)
    roots = [root(item) for item in range(count)]
    renumber = {value: number for number, value in enumerate(dict.fromkeys(roots))}
    return [renumber[value] for value in roots]


def group_split(labels, groups, val_fraction: float, test_fraction: float, seed: int, class_names=None):
    """Indices (train, val, test) with every group in one split only, and each class in all three (lesson 07).

    Within each class (a group counts for the class most of its items have) the groups are shuffled and
    dealt out: `test_fraction` and `val_fraction` of the groups, at least one each, the rest to train.
    A class needs three independent groups; fewer is an error that says which class.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError(f"Give one group per item: {len(groups)} groups for {len(labels)} labels.")
    members: dict = {}
    for index, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(index)
    by_class: dict = {}
    for group, items in members.items():
        by_class.setdefault(Counter(labels[items].tolist()).most_common(1)[0][0], []).append(group)
    rng = np.random.default_rng(seed)
    split_of = {}
    for label in sorted(by_class):
        class_groups = by_class[label]
        if len(class_groups) < 3:
            name = class_names[label] if class_names is not None else label
            raise ValueError(
                f"Class {name!r} has {len(class_groups)} independent group(s) of photos (near-duplicates and "
                "photos of one group count once): it needs at least 3 so train, val and test each get one; "
                "add photos of it from other scenes or sessions, or leave the class out.")
        order = [class_groups[i] for i in rng.permutation(len(class_groups))]
        n_test = max(1, round(test_fraction * len(order)))
        n_val = max(1, min(round(val_fraction * len(order)), len(order) - n_test - 1))
        for position, group in enumerate(order):
            split_of[group] = 2 if position < n_test else 1 if position < n_test + n_val else 0
    parts = ([], [], [])
    for index, group in enumerate(groups.tolist()):
        parts[split_of[group]].append(index)
    return tuple(sorted(part) for part in parts)


def group_split_dataset(dataset: LabeledImages, groups, source: str, seed: int, val_fraction=0.15,
                        test_fraction=0.15) -> Splits:
    """`dataset` split by `group_split` into `Splits`: no group in two splits (lesson 07)."""
    train, val, test = group_split(dataset.labels, groups, val_fraction, test_fraction, seed, dataset.classes)
    return Splits(dataset.subset(train), dataset.subset(val), dataset.subset(test), dataset.classes, source)


def pairs_across_splits(pairs, split_sizes_or_parts) -> int:
    """How many (first, second) pairs of item indices have their two items in different splits (lesson 07).

    `split_sizes_or_parts` is the (train, val, test) index lists a split function returned.
    """
    where = {index: part for part, indices in enumerate(split_sizes_or_parts) for index in indices}
    links = [(pair.first, pair.second) if hasattr(pair, "first") else tuple(pair) for pair in pairs]
    return sum(where.get(first) != where.get(second) for first, second in links)


def name_groups(paths, pattern: str) -> list[str]:
    """A group per file from its name: the class folder plus the first match of the regex `pattern` (its first
    parenthesised part if it has one), e.g. r"^(\\w+?)_" groups `session3_0041.jpg` with `session3_0042.jpg`;
    a name that does not match is a group of its own (lesson 07)."""
    regex = re.compile(pattern)
    groups = []
    for path in map(Path, paths):
        found = regex.search(path.name)
        key = (found.group(1) if found.groups() else found.group(0)) if found else path.name
        groups.append(f"{path.parent.name}/{key}")
    return groups
