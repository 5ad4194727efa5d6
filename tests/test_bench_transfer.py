"""bench/transfer.py: its few-label subsets and the table it prints."""
import numpy as np

from helpers import data


def test_labelled_subset_takes_as_many_images_of_every_class_and_depends_on_the_seed(load_bench):
    transfer = load_bench("transfer")
    train = data.load_dataset("digits", seed=0).train
    picks = transfer.labelled_subset(train, 10, seed=0)
    assert np.bincount(picks.labels).tolist() == [10] * 10
    assert picks.labels == transfer.labelled_subset(train, 10, seed=0).labels
    other = transfer.labelled_subset(train, 10, seed=1)
    assert [picks.image(i).sum() for i in range(10)] != [other.image(i).sum() for i in range(10)]


def test_table_has_one_row_per_arm_and_one_column_per_label_budget(load_bench):
    transfer = load_bench("transfer")
    results = {
        ("pretrained", "full fine-tune", "all"): transfer.Result([0.97, 0.98], [30.0, 32.0]),
        ("pretrained", "full fine-tune", "10/class"): transfer.Result([0.90], [20.0]),
        ("random init", "full fine-tune", "all"): transfer.Result([0.78]),
        ("raw pixels", "RBF SVC", "all"): transfer.Result([0.985]),
    }
    lines = transfer.table(results).splitlines()
    assert lines[0].split()[-2:] == ["all", "10/class"]
    rows = [line.split()[:2] for line in lines[2:]]
    assert rows == [["random", "init"], ["pretrained", "full"], ["raw", "pixels"]]
    assert "97.5 ± 0.5" in lines[3] and "(  31 s)" in lines[3] and "90.0 ± 0.0" in lines[3]
