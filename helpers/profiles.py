"""Profiles: one notebook, three scales (smoke, cpu, gpu), plus `auto` that picks one.

`resolve(profile, **overrides)` returns the `Settings` a notebook runs with; any single
setting can be overridden by name. `environment_report(settings)` says what this machine is.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import socket
from dataclasses import dataclass, field

PROFILE_NAMES = ("smoke", "cpu", "gpu", "auto")
GPU_MODEL = "google/vit-base-patch16-224-in21k"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Settings:
    """Everything a lesson needs to know about its scale. Validated on creation (lesson 00)."""

    profile: str
    model_name: str
    dataset_name: str
    train_size: int | None  # None: all training images
    eval_size: int | None  # None: all validation and test images
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "no"  # "no" | "bf16" | "fp16"
    seed: int = 0
    num_workers: int = 0
    reason: str = field(default="", compare=False)

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be greater than 0"),
            (self.weight_decay >= 0, "weight_decay must be 0 or more"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 or None"),
            (self.precision in ("no", "bf16", "fp16"), "precision must be 'no', 'bf16' or 'fp16'"),
            (self.train_size is None or self.train_size >= 1, "train_size must be None or at least 1"),
            (self.eval_size is None or self.eval_size >= 1, "eval_size must be None or at least 1"),
            (self.num_workers >= 0, "num_workers must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Bad setting: {message}.")


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings) if f.name not in ("profile", "reason"))

PROFILES: dict[str, dict] = {
    "smoke": dict(
        model_name="tiny-vit", dataset_name="digits", train_size=240, eval_size=120,
        epochs=1, batch_size=32, lr=1e-3,
    ),
    "cpu": dict(
        model_name="tiny-vit", dataset_name="digits", train_size=None, eval_size=None,
        epochs=15, batch_size=64, lr=1e-3,
    ),
    "gpu": dict(
        model_name=GPU_MODEL, dataset_name="cifar10", train_size=None, eval_size=None,
        epochs=3, batch_size=256, lr=1e-4, precision="bf16", num_workers=8,
    ),
}


def resolve(profile: str = "auto", **overrides) -> Settings:
    """The settings of `profile` ('smoke', 'cpu', 'gpu' or 'auto'), with `overrides` applied by name (lesson 00).

    None values in `overrides` keep the profile's setting, so a notebook can pass its
    parameters cell straight through.
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {', '.join(PROFILE_NAMES)}.")
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(map(repr, unknown))}: the settings are {', '.join(SETTING_NAMES)}.")
    name, reason = choose_profile() if profile == "auto" else (profile, "asked for by name")
    values = {**PROFILES[name], **{k: v for k, v in overrides.items() if v is not None}}
    changed = [k for k in overrides if overrides[k] is not None]
    if changed:
        reason += f"; overridden: {', '.join(f'{k}={values[k]!r}' for k in changed)}"
    return Settings(profile=name, reason=reason, **values)


def choose_profile() -> tuple[str, str]:
    """The profile `auto` stands for on this machine, and why (lesson 00)."""
    env = os.environ.get("COURSE_PROFILE")
    if env:
        if env not in PROFILES:
            raise ValueError(f"COURSE_PROFILE={env!r} is not a profile: choose one of {', '.join(PROFILES)}.")
        return env, f"COURSE_PROFILE={env}"
    if device_name() != "cuda":
        return "cpu", "no CUDA GPU found, so the offline cpu profile runs"
    if not is_online() and not gpu_assets_cached():
        return "cpu", "a CUDA GPU is here but the hub is offline and the gpu model is not cached"
    return "gpu", "a CUDA GPU is here and the gpu model can be had"


def device_name() -> str:
    """'cuda', 'mps' or 'cpu': the best accelerator PyTorch can use here (lesson 00)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def is_online(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub can be reached (and HF_HUB_OFFLINE is not set) (lesson 00)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def gpu_assets_cached() -> bool:
    """True when the gpu profile's model is already in the local Hugging Face cache (lesson 00)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(GPU_MODEL, "config.json"), str)


def environment_report(settings: Settings | None = None) -> str:
    """A few lines on Python, library versions, device, threads, network and the chosen profile (lesson 00)."""
    import torch
    import transformers

    device = device_name()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device += f" ({torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.0f} GiB)"
    lines = [
        f"Python        {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"torch         {torch.__version__}   transformers {transformers.__version__}",
        f"device        {device}, {torch.get_num_threads()} CPU threads",
        f"network       {'online' if is_online() else 'offline (hub not reachable or HF_HUB_OFFLINE=1)'}",
    ]
    if settings is not None:
        lines.append(f"profile       {settings.profile}: {settings.reason}")
    return "\n".join(lines)


def profile_table() -> str:
    """A markdown table of every setting in each profile (lesson 00)."""
    rows = ["| setting | " + " | ".join(PROFILES) + " |", "|---|" + "---|" * len(PROFILES)]
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for name in SETTING_NAMES:
        values = [PROFILES[p].get(name, defaults[name]) for p in PROFILES]
        rows.append(f"| {name} | " + " | ".join("all" if v is None else str(v) for v in values) + " |")
    return "\n".join(rows)
