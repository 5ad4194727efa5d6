"""bench/gpu_throughput.py: its --tiny mode runs the GPU benchmark's code path on a CPU."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_throughput.py"
ROW = r"^({}) +([\d,.]+) images/s  warm-up +[\d.]+ s$"


def test_tiny_mode_times_the_kit_and_its_peers_eager_and_compiled_and_profiles_the_compiled_rows():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--profile-kernels"], capture_output=True,
                            text=True, timeout=300, env=env, cwd=SCRIPT.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    expected = [f"{family} {how}" for family in ("kit", "transformers", "timm")
                for how in ("eager", "compiled (aot_eager)")]
    speeds = dict(re.findall(ROW.format("|".join(re.escape(name) for name in expected)), out, re.M))
    assert list(speeds) == expected, out
    assert all(float(speed.replace(",", "")) > 0 for speed in speeds.values())
    profiled = re.findall(r"^  top CPU operators of (.+) \(share of", out, re.M)
    assert profiled == ["kit compiled (aot_eager)", "transformers compiled (aot_eager)"], out
    assert "GFLOP per training image" in out.splitlines()[0] and "timm 1." in out.splitlines()[0]
    summary = out.strip().splitlines()[-3:]
    assert summary[0].startswith("kit compiled / kit eager: ") and "fit() trains eagerly here" in summary[0]
    assert summary[1].startswith("kit best / best peer: ")
    assert summary[2].startswith("kit default / best peer: ") and "(kit eager " in summary[2]


def test_without_timm_its_rows_are_skipped_with_a_note(load_bench, capsys):
    bench = load_bench("gpu_throughput")
    bench.timm = None
    bench.main(["--tiny", "--no-compile", "--steps", "1", "--warmup-steps", "0"])
    out = capsys.readouterr().out
    assert re.search(r"^timm eager +skipped: timm is not installed \(pip install -e \.\[bench\]\)$", out, re.M), out
    assert re.search(ROW.format("kit eager"), out, re.M) and re.search(ROW.format("transformers eager"), out, re.M)
    assert out.strip().splitlines()[-1].startswith("kit default / best peer: ")


def test_rows_after_the_budget_are_skipped_with_a_note(load_bench, capsys):
    bench = load_bench("gpu_throughput")
    bench.main(["--tiny", "--budget-s", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(line.endswith("skipped: the 0 s budget is spent") for line in lines[1:7])
    assert lines[-1] == "kit / best peer: not measured (out of budget)"


def test_attention_kernels_are_named_by_kind(load_bench):
    kind = load_bench("gpu_throughput").attention_kind
    assert kind(["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "ampere_bf16_s16816gemm"]) \
        == "flash"
    assert kind(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "sm90_xmma_gemm"]) == "memory-efficient"
    assert kind(["cudnn_generated_fort_native_sdpa_sm90_flash_fprop"]) == "cuDNN, flash"
    assert kind(["triton_poi_fused__scaled_dot_product_flash_attention_0", "softmax_warp_forward"]).startswith(
        "none of the fused ones")


def test_without_a_gpu_the_full_run_says_to_use_tiny(monkeypatch, load_bench):
    bench = load_bench("gpu_throughput")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--tiny"):
        bench.main([])
