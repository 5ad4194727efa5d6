"""The device plan: precision from the compute capability, micro-batch and accumulation from the memory model,
for the cards learners have, given as data; the memory model against what autograd really saves."""
import dataclasses

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, hardware, models, profiles, train
from helpers.hardware import GIB, VIT_B16, Device
from helpers.train.speed import saved_for_backward_bytes

CARDS = {
    "T4": Device("cuda", "Tesla T4", 15_655_829_504, (7, 5)),
    "L4": Device("cuda", "NVIDIA L4", 24_152_899_584, (8, 9)),
    "A100 40GB": Device("cuda", "NVIDIA A100-SXM4-40GB", 42_505_273_344, (8, 0)),
    "A100 80GB": Device("cuda", "NVIDIA A100-SXM4-80GB", 85_051_572_224, (8, 0)),
    "H100": Device("cuda", "NVIDIA H100 80GB HBM3", 85_045_870_592, (9, 0)),
    "RTX 3060": Device("cuda", "NVIDIA GeForce RTX 3060", 12_622_626_816, (8, 6)),
    "8 GB laptop": Device("cuda", "NVIDIA GeForce RTX 4060 Laptop GPU", 8_585_740_288, (8, 9)),
}
MPS = Device("mps", "Apple GPU (mps)", 12 * GIB)


def plan(device, **options):
    return hardware.plan_training(device, VIT_B16, model_name=profiles.GPU_MODEL, **options)


@pytest.mark.parametrize("card", CARDS)
def test_plan_takes_the_largest_micro_batch_that_fits_and_keeps_256_per_step(card):
    device = CARDS[card]
    chosen = plan(device)
    peak = lambda micro: hardware.training_peak_bytes(VIT_B16, micro, chosen.precision)  # noqa: E731
    assert chosen.fits and chosen.batch_size * chosen.grad_accum == 256
    assert chosen.predicted_peak_bytes == peak(chosen.batch_size) <= chosen.budget_bytes < device.memory_bytes
    assert chosen.batch_size == 256 or peak(chosen.batch_size * 2) > chosen.budget_bytes
    assert f"micro-batch {chosen.batch_size} x {chosen.grad_accum}" in str(chosen)


def test_precision_is_bf16_only_where_native():
    assert plan(CARDS["T4"]).precision == "fp16" and "gradient scaler" in plan(CARDS["T4"]).reasons[0]
    assert {plan(CARDS[name]).precision for name in CARDS if name != "T4"} == {"bf16"}
    assert plan(Device("cuda", "Tesla P100", 17 * 10**9, (6, 0))).precision == "no"
    assert plan(MPS).precision == "no" and hardware.precision_for(Device("cpu", "CPU"))[0] == "no"
    assert hardware.precision_for(CARDS["H100"], "fp16")[0] == "fp16"  # asked for: it works everywhere on CUDA
    assert hardware.precision_for(CARDS["H100"], "no")[0] == "no"


def test_small_cards_accumulate_and_hear_about_checkpointing_and_lora():
    big, t4, laptop = plan(CARDS["H100"]), plan(CARDS["T4"]), plan(CARDS["8 GB laptop"])
    assert (big.batch_size, big.grad_accum, big.advice) == (256, 1, "")
    assert t4.grad_accum > 1 and laptop.grad_accum > t4.grad_accum
    for small in (t4, laptop, plan(CARDS["RTX 3060"])):
        assert "gradient_checkpointing=True" in small.advice and "LoRA" in small.advice
    checkpointed = plan(CARDS["8 GB laptop"], gradient_checkpointing=True)
    assert checkpointed.gradient_checkpointing and checkpointed.batch_size > laptop.batch_size
    assert str(checkpointed.batch_size) in laptop.advice  # the advice names the micro-batch it would allow


def test_overrides_win_and_the_plan_fills_in_the_rest():
    assert plan(CARDS["T4"], fixed={"batch_size": 32}).settings() == dict(
        precision="fp16", batch_size=32, grad_accum=8, gradient_checkpointing=False)
    asked = plan(CARDS["T4"], fixed={"batch_size": 256, "grad_accum": 1, "precision": "no"})
    assert (asked.batch_size, asked.grad_accum, asked.precision) == (256, 1, "no")
    assert "over the budget" in asked.reasons[-1]
    assert plan(CARDS["H100"], fixed={"grad_accum": 4}).batch_size == 64


def test_unknown_memory_and_unknown_models_keep_the_profile_batch_with_one_sentence():
    unknown = plan(Device("cuda", "Mystery GPU", None, (8, 0)))
    assert (unknown.batch_size, unknown.grad_accum, unknown.precision) == (256, 1, "bf16")
    assert "memory could not be read" in unknown.reasons[-1] and unknown.reasons[-1].count(". ") == 0
    no_model = hardware.plan_training(CARDS["T4"], None, model_name="some/cnn")
    assert no_model.batch_size == 256 and "no memory model for some/cnn" in no_model.reasons[-1]


def test_a_card_too_small_for_one_image_names_the_minimum_and_the_options():
    tiny_card = plan(Device("cuda", "GeForce GT 1030", 2 * GIB, (6, 1)))
    sentence = tiny_card.reasons[-1]
    assert not tiny_card.fits
    assert f"{hardware.training_peak_bytes(VIT_B16, 1, 'no') / GIB:.1f} GiB" in sentence
    assert "LoRA" in sentence and "gradient_checkpointing=True" in sentence and "smaller model" in sentence
    gpu = profiles.resolve("gpu")
    with pytest.raises(ValueError, match="needs about"):
        profiles.follow_device_plan(gpu, device=Device("cuda", "GeForce GT 1030", 2 * GIB, (6, 1)))


def test_mps_plans_float32_and_says_the_cpu_profile_fits_a_mac():
    mac = plan(MPS)
    assert mac.precision == "no" and mac.batch_size * mac.grad_accum == 256 and "cpu profile" in mac.advice


def test_the_gpu_profile_follows_the_plan_and_the_report_prints_it():
    gpu = profiles.resolve("gpu", epochs=1)
    planned = profiles.follow_device_plan(gpu, ["epochs"], device=CARDS["T4"])
    assert (planned.precision, planned.batch_size, planned.grad_accum) == ("fp16", 128, 2)
    assert planned.epochs == 1 and profiles.follow_device_plan(planned, device=CARDS["T4"]) == planned
    kept = profiles.follow_device_plan(profiles.resolve("gpu", batch_size=16), ["batch_size"], device=CARDS["T4"])
    assert (kept.batch_size, kept.grad_accum) == (16, 16)
    report = profiles.environment_report(planned)
    assert "plan          for Tesla T4" in report and "fp16 autocast" in report and "micro-batch 128 x 2" in report
    cpu = profiles.resolve("cpu")
    assert profiles.follow_device_plan(cpu, device=CARDS["T4"]) is cpu


def test_auto_picks_cpu_when_the_gpu_is_too_small(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "device_name", lambda: "cuda")
    monkeypatch.setattr(profiles, "gpu_assets_cached", lambda: True)
    monkeypatch.setattr(profiles, "is_online", lambda: False)
    monkeypatch.setattr(hardware, "read_device", lambda: Device("cuda", "GeForce GT 1030", 2 * GIB, (6, 1)))
    name, reason = profiles.choose_profile()
    assert name == "cpu" and "too small" in reason and "LoRA" in reason
    monkeypatch.setattr(hardware, "read_device", lambda: CARDS["L4"])
    assert profiles.choose_profile()[0] == "gpu"


def test_parameter_count_of_vit_b16_matches_transformers():
    small = dataclasses.replace(VIT_B16, layers=1)
    config = ViTConfig(num_hidden_layers=1, num_labels=10)
    assert small.parameters == sum(p.numel() for p in ViTForImageClassification(config).parameters())
    assert abs(VIT_B16.parameters - 85.8e6) < 0.1e6


@pytest.fixture(scope="module")
def two_layer_vit_b():
    """ViT-B/16's widths and 224 px images with two layers: every term of the memory model, quickly."""
    torch.manual_seed(0)
    config = ViTConfig(num_hidden_layers=2, num_labels=10)
    return ViTForImageClassification(config).train(), hardware.model_shape(config)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_model_matches_what_autograd_saves(two_layer_vit_b, precision, checkpointing):
    model, shape = two_layer_vit_b
    if checkpointing:
        hardware.enable_gradient_checkpointing(model)
    images, labels = torch.randn(3, 3, 224, 224), torch.tensor([0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        one = saved_for_backward_bytes(model, images[:1], labels[:1])
        three = saved_for_backward_bytes(model, images, labels)
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    measured = (three - one) / 2  # per image; the constant part (autocast's weight copies) cancels
    predicted = hardware.activation_bytes_per_image(shape, precision, checkpointing)
    if checkpointing:  # the layer recomputed during the backward pass is not saved in the forward pass
        predicted -= hardware.layer_activation_bytes(shape, precision)
    assert abs(predicted - measured) / measured < 0.01, (predicted, measured)


def test_gradient_checkpointing_through_fit_gives_the_same_training(tiny_model_dir):
    splits = data.load_dataset("digits", train_size=64, eval_size=32)
    settings = profiles.resolve("smoke", batch_size=16)
    histories = []
    for checkpointing in (False, True):
        model, processor = models.load_model(str(tiny_model_dir), splits.classes)
        ready = splits.with_transforms(data.eval_transform(data.ImageSpec.from_processor(processor)))
        histories.append(train.fit(model, ready.train, ready.val, settings, progress=False,
                                   gradient_checkpointing=checkpointing))
        assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules()) is checkpointing
    assert histories[0].rows[0]["train_loss"] == pytest.approx(histories[1].rows[0]["train_loss"], rel=1e-5)


def test_gradient_checkpointing_needs_a_transformers_model():
    with pytest.raises(ValueError, match="needs a transformers model"):
        hardware.enable_gradient_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run by bench/gpu_check.py's suite stage")
@pytest.mark.parametrize("micro, checkpointing", [(64, False), (64, True)])
def test_memory_model_predicts_the_measured_peak_on_a_gpu(micro, checkpointing):
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=10))
    if checkpointing:
        hardware.enable_gradient_checkpointing(model)
    images = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8)
    dataset = train.DeviceImages(images, [i % 10 for i in range(1024)],
                                 data.ImageSpec((224, 224), (0.5,) * 3, (0.5,) * 3), augment=True)
    settings = profiles.resolve("gpu")
    result = train.measure_training_throughput(model, dataset, settings, batch_size=micro, steps=3, warmup_steps=1,
                                               torch_compile=False)
    precision = train.mixed_precision_for(settings)[0]
    predicted = hardware.training_peak_bytes(VIT_B16, micro, precision, gradient_checkpointing=checkpointing,
                                             resident_bytes=images.numel()) / 2**20
    assert abs(result.peak_gpu_mib / predicted - 1) <= 0.15, (result.peak_gpu_mib, predicted)
