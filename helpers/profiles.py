"""Profiles: one notebook, three scales (smoke, cpu, gpu), plus `auto` that picks one.

`resolve(profile, **overrides)` returns the `Settings` a notebook runs with; any single
setting can be overridden by name. `environment_report(settings)` says what this machine is.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import platform
import socket
from dataclasses import dataclass, field

PROFILE_NAMES = ("smoke", "cpu", "gpu", "auto")
GPU_MODEL = "google/vit-base-patch16-224-in21k"
HUB_HOST = "huggingface.co"


class Keep:
    """The type of `KEEP`: "keep the profile's value", where None is itself a value (lesson 00)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep()  # resolve(..., train_size=KEEP) keeps the profile's train_size; train_size=None means all images


SEED_LIMIT = 2**32  # NumPy takes seeds in [0, 2**32)


@dataclass(frozen=True)
class Settings:
    """Everything a lesson needs to know about its scale. Validated on creation, types included (lesson 00)."""

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
    max_grad_norm: float | None = 1.0  # None: no gradient clipping
    precision: str = "no"  # "no" | "bf16" | "fp16"
    seed: int = 0
    num_workers: int = 0
    reason: str = field(default="", compare=False)

    def __post_init__(self):
        for setting in dataclasses.fields(self):
            problem = type_problem(setting.name, getattr(self, setting.name), setting.type)
            if problem:
                raise ValueError(f"Bad setting: {problem}.")
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
            (0 <= self.seed < SEED_LIMIT, f"seed must be in [0, {SEED_LIMIT - 1}], got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Bad setting: {message}.")


def type_problem(name: str, value, annotation: str) -> str:
    """What is wrong with the type of `value` for a setting declared `annotation` ('' when nothing) (lesson 00)."""
    if value is None:
        return "" if annotation.endswith("| None") else f"{name} cannot be None (profiles.KEEP keeps the profile's value)"
    kind = annotation.split(" |")[0]
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        return f"{name} must be a whole number, got {value!r}"
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        return f"{name} must be a number, got {value!r}"
    if kind == "float" and not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if kind == "str" and not (isinstance(value, str) and value):
        return f"{name} must be a non-empty text, got {value!r}"
    return ""


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

    An override of `KEEP` keeps the profile's value; None is a value (train_size=None: all
    images, max_grad_norm=None: no clipping). Names and types are checked as in `with_overrides`.
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {', '.join(PROFILE_NAMES)}.")
    name, reason = choose_profile() if profile == "auto" else (profile, "asked for by name")
    return with_overrides(Settings(profile=name, reason=reason, **PROFILES[name]), **overrides)


def with_overrides(settings: Settings, **overrides) -> Settings:
    """`settings` with single settings replaced by name, checked like `resolve`'s; `KEEP` keeps one (lesson 00)."""
    check_setting_names(overrides)
    changed = {name: value for name, value in overrides.items() if value is not KEEP}
    if not changed:
        return settings
    reason = settings.reason + f"; overridden: {', '.join(f'{k}={v!r}' for k, v in changed.items())}"
    return dataclasses.replace(settings, reason=reason, **changed)


def check_setting_names(overrides: dict) -> None:
    """Refuse names that are not settings, naming the settings there are (lesson 00)."""
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(map(repr, unknown))}: the settings are {', '.join(SETTING_NAMES)}.")


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
