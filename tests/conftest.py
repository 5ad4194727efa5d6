"""Shared fixtures: tiny models and data the tests make themselves (no network)."""
import os

import pytest
import torch
from transformers import ViTForImageClassification, ViTImageProcessor

from helpers import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved random tiny ViT with 10 labels and its image processor, as save_pretrained writes them."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    ViTForImageClassification(models.tiny_vit_config(10)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder
