"""bench/gpu_throughput.py: its --tiny mode runs the GPU benchmark's code path on a CPU."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_throughput.py"


def test_tiny_mode_times_the_eager_and_the_compiled_step():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=300,
                            env=env, cwd=SCRIPT.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    speeds = dict(re.findall(r"^(eager|torch\.compile \(aot_eager\))\s+([\d,.]+) images/s", result.stdout, re.M))
    assert set(speeds) == {"eager", "torch.compile (aot_eager)"}, result.stdout
    assert all(float(speed.replace(",", "")) > 0 for speed in speeds.values())
    assert "GFLOP per training image" in result.stdout


def test_without_a_gpu_the_full_run_says_to_use_tiny(monkeypatch, load_bench):
    bench = load_bench("gpu_throughput")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--tiny"):
        bench.main([])
