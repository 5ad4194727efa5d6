"""Colab: what the install cell says about the runtime it finds, a failed install in one sentence, and the plan the
gpu profile gets on a simulated T4. The real install into a venv that already has torch is in tests/install/."""
import importlib.metadata

import pytest
import torch

from helpers import profiles
from helpers.course import colab, doctor

GIB = 2**30


def test_a_session_without_a_gpu_is_told_it_runs_the_cpu_profile():
    line = colab.profile_line()
    if torch.cuda.is_available():
        assert line.startswith("GPU: ")
    else:
        assert line.startswith("No GPU in this session, so the notebooks run the cpu profile")
        assert "Runtime > Change runtime type > T4 GPU" in line


def test_a_failed_install_is_one_sentence_and_keeps_torch(tmp_path, capsys):
    assert colab.install_kit(str(tmp_path / "not-a-kit")) is False
    printed = capsys.readouterr().out
    kept = importlib.metadata.version("torch")
    assert printed.count("\n") == 1
    assert printed.startswith(f"Could not install the kit while keeping Colab's torch=={kept}")
    assert colab.installed_versions()["torch"] == kept


def test_on_a_t4_the_gpu_profile_plans_fp16_with_accumulation():
    if not hasattr(profiles, "device_plan"):
        pytest.skip("the device-aware planner (profiles.device_plan) is not in this kit yet")
    from helpers import hardware

    t4 = hardware.Device("cuda", "Tesla T4", int(15.0 * GIB), (7, 5))  # what Colab's T4 reports
    line = doctor.device_plan_line(t4)
    assert line.startswith("Tesla T4 (15.0 GiB, compute capability 7.5): the gpu profile plans fp16, micro-batch ")
    micro, accumulation = map(int, line.split("micro-batch ")[1].split(" accumulation")[0].split(" x "))
    assert accumulation > 1 and micro * accumulation == 256
