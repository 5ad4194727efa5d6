"""Two CPU processes under torchrun train through fit() and end with identical weights."""
import json
import os
import subprocess
import sys


def test_two_process_torchrun_keeps_ranks_in_sync(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "helpers.distributed_demo", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["checksum"] != ranks[0]["initial_checksum"]  # it trained
