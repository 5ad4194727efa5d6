"""Two processes under torchrun train through fit(): they share each epoch's images out and end with identical
weights."""
from helpers.lessons import l05_training as l05


def test_two_process_torchrun_shares_the_data_out_and_keeps_ranks_in_sync(tmp_path):
    ranks = l05.run_distributed_demo(tmp_path, nproc_per_node=2, train_size=128, timeout=240)
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    first, second = (r["sample_indices"] for r in ranks)
    # one epoch of 128 images in batches of 16: four batches each, no image read twice, none left out
    assert len(first) == len(set(first)) == 64 and len(second) == len(set(second)) == 64
    assert set(first).isdisjoint(second) and set(first) | set(second) == set(range(128))
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["checksum"] != ranks[0]["initial_checksum"]  # it trained
    # the warmup-cosine schedule is sized for the steps each rank takes, so it ends at 0 on every rank
    assert [r["last_lr"] for r in ranks] == [0.0, 0.0]
    # one train_loss for the run: the mean over all 128 images. A mean cross-entropy over 10 classes starts near
    # ln 10 = 2.30 and four steps move it little; dividing by the process count, or multiplying by it, leaves 1.5-3.5.
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"] and 1.5 < ranks[0]["train_loss"] < 3.5
