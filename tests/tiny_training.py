"""A tiny ViT and a separable image task, small enough for many `fit()` runs in a test (and in its subprocesses:
this module imports only what they need)."""
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, profiles

SPEC = data.ImageSpec((16, 16), (0.5,) * 3, (0.5,) * 3)


def tiny_vit(seed=0, num_labels=2):
    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_labels)
    return ViTForImageClassification(config)


def bright_or_dark(n, seed=0):
    """Class 0: dark noisy images, class 1: bright ones. Separable, so a working loop must learn it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 170, 60)
    noise = torch.randint(-50, 50, (n, 3, 16, 16), generator=generator)
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    return data.TensorImages(images, labels.tolist(), ["dark", "bright"], transform=data.to_model_input(SPEC))


SETTINGS = profiles.resolve("smoke", epochs=2, batch_size=16, lr=3e-3, warmup_ratio=0.0)


def weights(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_weights(a, b, atol=0.0):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)
