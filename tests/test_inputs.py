"""fit_inputs: the training and validation sets come from the GPU where they fit, else from CPU workers; the
precision of the device batches follows the plan. Devices are given as data (DeviceImages runs on a CPU too)."""
import torch

from helpers import data, profiles, train
from helpers.hardware import Device

SPEC = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
T4 = Device("cuda", "Tesla T4", 15_655_829_504, (7, 5))
H100 = Device("cuda", "NVIDIA H100 80GB HBM3", 85_045_870_592, (9, 0))


def splits():
    return data.load_dataset("digits", train_size=100, eval_size=40)


def test_on_a_gpu_the_images_live_on_the_card_in_the_plans_precision():
    settings = profiles.resolve("gpu")
    for device, dtype in ((T4, torch.float16), (H100, torch.bfloat16)):
        inputs = train.fit_inputs(splits(), SPEC, settings, augment=True, device=device)
        assert inputs.on_device and isinstance(inputs.train, train.DeviceImages)
        assert inputs.train.dtype == inputs.val.dtype == dtype and inputs.train.augment and not inputs.val.augment
        assert len(inputs.train) == 100 and str(dtype) in str(inputs)
    no_autocast = train.fit_inputs(splits(), SPEC, profiles.resolve("gpu", precision="no"), device=H100)
    assert no_autocast.train.dtype == torch.float32


def test_images_too_big_for_the_card_go_through_cpu_workers():
    small_card = Device("cuda", "tiny", 1_000_000, (8, 0))
    inputs = train.fit_inputs(splits(), SPEC, profiles.resolve("gpu"), device=small_card)
    assert not inputs.on_device and "too much to keep on tiny" in inputs.reason and "8 worker" in inputs.reason
    image, _ = inputs.train[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 32)


def test_without_a_gpu_the_eval_transform_feeds_fit_as_before():
    raw = splits()
    inputs = train.fit_inputs(raw, SPEC, profiles.resolve("smoke"), device=Device("cpu", "CPU"))
    before = raw.with_transforms(data.eval_transform(SPEC))
    assert not inputs.on_device and "no CUDA GPU" in inputs.reason
    assert torch.equal(inputs.train[3][0], before.train[3][0]) and torch.equal(inputs.val[5][0], before.val[5][0])


def test_device_batches_match_the_cpu_transform_for_evaluation():
    raw = splits()
    on_card = train.fit_inputs(raw, SPEC, profiles.resolve("gpu", precision="no"), device=H100)
    on_cpu = train.fit_inputs(raw, SPEC, profiles.resolve("smoke"), device=Device("cpu", "CPU"))
    images, labels = on_card.val.batch([0, 1, 2])
    assert torch.allclose(images, torch.stack([on_cpu.val[i][0] for i in range(3)]), atol=1e-5)
    assert labels.tolist() == [on_cpu.val[i][1] for i in range(3)]


def test_fit_loader_workers_end_with_each_pass_while_the_loader_lives():
    import psutil

    loader = train.loader_for(splits().with_transforms(data.eval_transform(SPEC)).train, 16, num_workers=2)
    assert sum(len(images) for images, _ in loader) == 100
    assert psutil.Process().children() == []  # a kernel that keeps `loader` alive keeps no worker processes
