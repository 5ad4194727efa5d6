"""The plan for the GPU that is here (lesson 00): precision from its compute capability, micro-batch and
gradient accumulation from its memory, with the reason for each choice.

`read_device()` reads the accelerator; every other function takes a `Device` as data, so a plan for a
Colab T4 or a laptop GPU can be made (and tested) anywhere. The memory model counts what a training step
of a ViT keeps on the GPU: float32 weights, their gradients and AdamW's two moments (16 bytes a parameter),
the half-precision copies of the weights autocast makes, and per image the activations autograd saves for
the backward pass (`helpers.train.saved_for_backward_bytes` measures the same thing on a real model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

GIB = 2**30
HEADROOM = 0.15  # share of the card left free: allocator fragmentation, cuBLAS/cuDNN workspaces, evaluation
CONTEXT_BYTES = GIB // 2  # the CUDA context and libraries, outside PyTorch's allocator
SMALL_CARD_BYTES = int(16.5 * GIB)  # a "16 GB" card or smaller: the plan says what else saves memory
MEMORY_CAP_VARIABLE = "COURSE_GPU_MEMORY_GB"  # plan for (and cap the process to) a smaller card than the one here


@dataclass(frozen=True)
class Device:
    """An accelerator as the planner sees it: kind ('cuda', 'mps' or 'cpu'), name, memory in bytes (None when it
    cannot be read) and CUDA compute capability (lesson 00)."""

    kind: str
    name: str
    memory_bytes: int | None = None
    capability: tuple[int, int] | None = None

    def __str__(self) -> str:
        memory = f"{self.memory_bytes / GIB:.1f} GiB" if self.memory_bytes else "memory unknown"
        capability = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return f"{self.name} ({memory}{capability})"


def read_device(index: int = 0) -> Device:
    """The accelerator here: a CUDA GPU, Apple's mps, or the CPU (lesson 00).

    With the environment variable COURSE_GPU_MEMORY_GB set, the process is capped to that many GB of the
    GPU (`torch.cuda.set_per_process_memory_fraction`) and the device reports that much memory: a way to
    try the plan of a smaller card on a large one.
    """
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        memory = props.total_memory
        cap = os.environ.get(MEMORY_CAP_VARIABLE)
        if cap:
            memory = min(memory, int(float(cap) * 1e9))
            torch.cuda.set_per_process_memory_fraction(memory / props.total_memory, index)
        return Device("cuda", props.name, memory, (props.major, props.minor))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        recommended = getattr(torch.mps, "recommended_max_memory", lambda: None)()
        return Device("mps", "Apple GPU (mps)", recommended or None)
    return Device("cpu", "CPU")


def precision_for(device: Device, asked: str = "bf16") -> tuple[str, str]:
    """The autocast precision `fit()` uses on `device` when `asked` for one ('no', 'bf16' or 'fp16'), and why (lesson 05).

    bf16 only where the GPU computes it natively (compute capability 8.0 and later: A100, L4, RTX 30xx/40xx,
    H100); `torch.cuda.is_bf16_supported()` also counts emulated bf16, which is slow. Compute capability
    7.x (T4, V100) gets fp16 with a gradient scaler; older GPUs have no tensor cores and stay in float32.
    """
    if device.kind != "cuda":
        return "no", f"no CUDA GPU ({device.kind}): autocast in fit() is for CUDA, so training stays in float32"
    if asked == "no":
        return "no", "precision='no' was asked for: float32 on the GPU"
    major, minor = device.capability or (0, 0)
    if asked == "fp16":
        return "fp16", "fp16 autocast, with a gradient scaler against underflow"
    if major >= 8:
        return "bf16", (f"bf16 autocast: native on compute capability {major}.{minor}, float32's range, "
                        "no gradient scaler needed; weights and optimizer stay float32")
    if major == 7:
        return "fp16", (f"compute capability {major}.{minor} has no native bf16 (emulating it is slow): "
                        "fp16 autocast, with a gradient scaler against underflow")
    return "no", f"compute capability {major}.{minor} has no tensor cores for half precision: float32"


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a ViT that decide its memory: layers, widths, heads, image and patch size, labels (lesson 00)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    image_size: int
    patch_size: int
    num_labels: int
    channels: int = 3

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def parameters(self) -> int:
        """Weights and biases: patch embedding, CLS and positions, each layer's attention, MLP and two
        LayerNorms, the final LayerNorm and the classification head."""
        d, i = self.hidden, self.intermediate
        embedding = self.channels * self.patch_size**2 * d + d + d + self.tokens * d
        layer = 4 * (d * d + d) + (d * i + i) + (i * d + d) + 2 * 2 * d
        return embedding + self.layers * layer + 2 * d + d * self.num_labels + self.num_labels


VIT_B16 = ModelShape(layers=12, hidden=768, intermediate=3072, heads=12, image_size=224, patch_size=16,
                     num_labels=10)


def model_shape(config, num_labels: int | None = None) -> ModelShape:
    """The `ModelShape` of a transformers ViT config (lesson 00)."""
    return ModelShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                      config.num_attention_heads, config.image_size, config.patch_size,
                      num_labels or config.num_labels, config.num_channels)


def layer_activation_bytes(shape: ModelShape, precision: str) -> int:
    """Bytes autograd saves in one encoder layer for one image (lesson 00).

    The residual stream stays float32 under autocast, so both LayerNorm inputs are float32; each linear
    layer saves its input in the compute precision (under autocast query, key and value each cast the
    LayerNorm output separately, so three copies); attention (sdpa) saves query, key, value and its output
    but no N x N matrix; the GELU saves its input; LayerNorm statistics and attention's log-sum-exp are float32.
    """
    n, d, i, h = shape.tokens, shape.hidden, shape.intermediate, shape.heads
    half = precision in ("bf16", "fp16")
    e = 2 if half else 4
    linear_inputs = (3 if half else 1) * d + d + i  # query/key/value input, first and second MLP layer inputs
    return n * (2 * 4 * d + e * linear_inputs + e * 4 * d + e * i + 2 * 2 * 4 + 4 * h)


def activation_bytes_per_image(shape: ModelShape, precision: str = "bf16",
                               gradient_checkpointing: bool = False) -> int:
    """Bytes autograd keeps for the backward pass per training image: the layers' activations, plus the input
    pixels, the final LayerNorm and the head (lesson 00). With gradient checkpointing only each layer's input
    is kept, and one layer's activations are recomputed at a time during the backward pass."""
    n, d = shape.tokens, shape.hidden
    e = 2 if precision in ("bf16", "fp16") else 4
    outside = e * shape.channels * shape.image_size**2 + 4 * n * d + 2 * 4 * n + e * d + 4 * shape.num_labels
    layer = layer_activation_bytes(shape, precision)
    if gradient_checkpointing:
        return shape.layers * 4 * n * d + layer + outside
    return shape.layers * layer + outside


def training_peak_bytes(shape: ModelShape, micro_batch: int, precision: str = "bf16", *,
                        gradient_checkpointing: bool = False, resident_bytes: int = 0) -> int:
    """Predicted peak GPU memory (as `torch.cuda.max_memory_allocated` counts it) of `fit()`'s training step
    with AdamW (lesson 00).

    16 bytes a parameter (float32 weights, gradients, AdamW's two moments), 2 more under autocast (the
    half-precision weight copies it keeps for the step), the saved activations of `micro_batch` images, one
    more layer's worth per image for the gradients in flight at the start of the backward pass, and
    `resident_bytes` of data kept on the GPU (e.g. `DeviceImages`).
    """
    half = precision in ("bf16", "fp16")
    static = (16 + (2 if half else 0)) * shape.parameters
    per_image = activation_bytes_per_image(shape, precision, gradient_checkpointing)
    per_image += layer_activation_bytes(shape, precision)
    return static + micro_batch * per_image + resident_bytes


def memory_budget(device: Device) -> int | None:
    """The bytes a plan may use on `device`: its memory less the CUDA context, less `HEADROOM` (lesson 00)."""
    if not device.memory_bytes:
        return None
    return int((device.memory_bytes - CONTEXT_BYTES) * (1 - HEADROOM))


@dataclass
class Plan:
    """What to train with on a device, and why: precision, micro-batch x accumulation, checkpointing, the predicted
    peak memory against the budget, and advice for small cards (lesson 00)."""

    device: Device
    precision: str
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    predicted_peak_bytes: int | None
    budget_bytes: int | None
    reasons: list[str] = field(default_factory=list)
    advice: str = ""
    fits: bool = True

    def settings(self) -> dict:
        """The settings this plan decides, by name."""
        return dict(precision=self.precision, batch_size=self.batch_size, grad_accum=self.grad_accum,
                    gradient_checkpointing=self.gradient_checkpointing)

    def __str__(self) -> str:
        return "\n".join([f"for {self.device}:", *self.reasons] + ([self.advice] if self.advice else []))


def micro_batch_choices(effective_batch: int) -> list[int]:
    """Micro-batches that divide `effective_batch` exactly, largest first: powers of two and the batch itself (lesson 00)."""
    choices = {effective_batch} | {2**k for k in range(effective_batch.bit_length()) if effective_batch % 2**k == 0}
    return sorted(choices, reverse=True)


def plan_training(device: Device, shape: ModelShape | None, *, effective_batch: int = 256, precision: str = "bf16",
                  gradient_checkpointing: bool = False, fixed: dict | None = None, resident_bytes: int = 0,
                  model_name: str = "the model") -> Plan:
    """The plan for training a model of `shape` on `device` with `effective_batch` images per optimizer step
    (lesson 00).

    The largest micro-batch that divides `effective_batch` and whose predicted peak fits the budget;
    `grad_accum` makes up the rest. `fixed` holds settings the learner chose (precision, batch_size,
    grad_accum, gradient_checkpointing): they win, and the plan fills in the others. `shape=None` (no memory
    model for this model) keeps the micro-batch of the profile.
    """
    fixed = dict(fixed or {})
    chosen, why = precision_for(device, fixed.get("precision", precision))
    checkpointing = bool(fixed.get("gradient_checkpointing", gradient_checkpointing))
    budget = memory_budget(device)
    plan = Plan(device, chosen, 0, 1, checkpointing, None, budget, [why])
    peak = None if shape is None else (lambda micro: training_peak_bytes(
        shape, micro, chosen, gradient_checkpointing=checkpointing, resident_bytes=resident_bytes))
    if "batch_size" in fixed or peak is None or budget is None:
        micro = fixed.get("batch_size") or max(1, effective_batch // fixed.get("grad_accum", 1))
    else:
        largest = effective_batch // fixed.get("grad_accum", 1)
        fitting = [m for m in micro_batch_choices(effective_batch) if m <= largest and peak(m) <= budget]
        micro = fitting[0] if fitting else 0
    if micro == 0:
        return _too_small(plan, shape, peak, model_name)
    plan.batch_size = micro
    plan.grad_accum = fixed.get("grad_accum") or max(1, round(effective_batch / micro))
    plan.predicted_peak_bytes = peak(micro) if peak else None
    plan.reasons.append(_batch_reason(plan, fixed, shape is None, model_name))
    if device.kind == "cuda" and shape is not None and 0 < (device.memory_bytes or 0) <= SMALL_CARD_BYTES:
        plan.advice = _small_card_advice(plan, shape, effective_batch, resident_bytes)
    if device.kind == "mps":
        plan.advice = ("fit() trains on the CPU on a Mac (its Accelerator uses a CUDA GPU or the CPU), so ViT-B/16 "
                       "at 224 px takes hours there: the cpu profile is the one for this machine.")
    return plan


def _batch_reason(plan: Plan, fixed: dict, no_model: bool, model_name: str) -> str:
    split = (f"micro-batch {plan.batch_size} x {plan.grad_accum} accumulation = "
             f"{plan.batch_size * plan.grad_accum} images per optimizer step")
    if "batch_size" in fixed or "grad_accum" in fixed:
        split += " (batch_size/grad_accum as overridden)"
    if plan.budget_bytes is None:
        return (f"{split}: this device's memory could not be read, so the profile's micro-batch stays; if it runs "
                "out of memory, override batch_size with a smaller power of two (grad_accum keeps the rest).")
    if no_model:
        return f"{split}: the kit has no memory model for {model_name}, so the profile's micro-batch stays."
    peak, budget = plan.predicted_peak_bytes / GIB, plan.budget_bytes / GIB
    verdict = "the largest that fits" if not fixed.keys() & {"batch_size", "grad_accum"} else "as asked"
    warning = "" if plan.predicted_peak_bytes <= plan.budget_bytes else " (over the budget: it may run out of memory)"
    checkpointing = ", gradient checkpointing on" if plan.gradient_checkpointing else ""
    return (f"{split}{checkpointing}: predicted peak {peak:.1f} GiB of a {budget:.1f} GiB budget, "
            f"{verdict}{warning}")


def _small_card_advice(plan: Plan, shape: ModelShape, effective_batch: int, resident_bytes: int) -> str:
    if plan.gradient_checkpointing:
        return ("on a card this size LoRA (lesson 02) trains about 1% of the weights and needs no AdamW state "
                "for the rest, if memory is still short.")
    with_checkpointing = plan_training(plan.device, shape, effective_batch=effective_batch, precision=plan.precision,
                                       gradient_checkpointing=True, resident_bytes=resident_bytes)
    return (f"on a card this size, gradient_checkpointing=True stores about "
            f"{activation_bytes_per_image(shape, plan.precision) / activation_bytes_per_image(shape, plan.precision, True):.0f}"
            f"x fewer activations (micro-batch {with_checkpointing.batch_size}, about a third slower per image), "
            "and LoRA (lesson 02) trains about 1% of the weights.")


def _too_small(plan: Plan, shape: ModelShape, peak, model_name: str) -> Plan:
    need = peak(1) / GIB
    budget = plan.budget_bytes / GIB
    plan.fits = False
    plan.reasons.append(
        f"{model_name} needs about {need:.1f} GiB to train on even one image at a time here, more than this card's "
        f"{budget:.1f} GiB budget: use LoRA (lesson 02), gradient_checkpointing=True, or a smaller model "
        "(e.g. model_name='tiny-vit').")
    return plan


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them: several times less
    activation memory for about a third more compute; `fit()` does this with `gradient_checkpointing=True`
    (lesson 00 prints when the plan suggests it). Needs a transformers model."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    keyword = "activation_checkpointing_kwargs"
    if enable is None:
        enable, keyword = getattr(model, "gradient_checkpointing_enable", None), "gradient_checkpointing_kwargs"
    if enable is None:
        raise ValueError(f"gradient_checkpointing=True needs a transformers model; a {type(model).__name__} cannot "
                         "recompute its layers: leave the setting off for it.")
    enable(**{keyword: {"use_reentrant": False}})
