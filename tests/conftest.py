"""Shared fixtures: tiny models and data the tests make themselves (no network)."""
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it on import
# One share of the cores per pytest-xdist worker (and the notebook kernels it starts): 14 workers of 16
# threads each on 16 cores spend their time waiting for one another.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import ViTForImageClassification, ViTImageProcessor  # noqa: E402

from helpers import models  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also when torch was imported before this file


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved random tiny ViT with 10 labels and its image processor, as save_pretrained writes them."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    ViTForImageClassification(models.tiny_vit_config(10)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def load_bench():
    """`load_bench("transfer")` imports bench/transfer.py as a module (the bench folder is not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def not_yet(capsys):
    """`not_yet(checker, *args)`: the one line an exercise checker prints for a wrong answer (it must return False)."""
    def run(check, *args, **kwargs) -> str:
        capsys.readouterr()
        assert check(*args, **kwargs) is False, f"{check.__name__} accepted a wrong answer"
        printed = capsys.readouterr().out
        assert printed.startswith(("Not yet: ", "Not answered yet")) and printed.count("\n") == 1, printed
        return printed
    return run
