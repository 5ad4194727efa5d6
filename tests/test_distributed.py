"""Two processes under torchrun train through fit() and end with identical weights."""
from helpers.lessons import l05_training as l05


def test_two_process_torchrun_keeps_ranks_in_sync(tmp_path):
    ranks = l05.run_distributed_demo(tmp_path, nproc_per_node=2, timeout=240)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["checksum"] != ranks[0]["initial_checksum"]  # it trained
