"""helpers.train.loop on a model small enough to check by hand: the loss, one optimizer step of each kind,
accumulation, the history `fit()` records, early stopping, restoring the best epoch, resuming with random
draws (dropout, augmentation) in the training step, what a resume and a fresh run refuse, a loss that turns NaN,
the Accelerator `fit()` asks for, and compiling with a recording backend."""
import dataclasses
import json
import math
import random
import re
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from helpers import data, hardware, profiles
from helpers.train import DeviceImages, guards, loop
from helpers.train.checkpoint import CheckpointError


class Points(Dataset):
    """`n` points in 4-D with labels 0..2; `seen` records every index served, in order."""

    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = torch.randint(0, 3, (n,), generator=generator)
        self.seen: list[int] = []

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.x[index], int(self.y[index])


class WithIdle(nn.Module):
    """A linear classifier plus a weight matrix and a bias that take part in the loss with zero gradient:
    only weight decay can move them."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.idle_weight = nn.Parameter(torch.ones(3, 3))
        self.idle_bias = nn.Parameter(torch.ones(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear(self.dropout(x)) + 0 * (self.idle_weight.sum() + self.idle_bias.sum())


def model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return WithIdle(dropout)


SETTINGS = dataclasses.replace(
    profiles.resolve("smoke", epochs=2, batch_size=4, lr=0.1, warmup_ratio=0.0, weight_decay=0.0),
    max_grad_norm=None,
)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b, atol=0.0):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def gradient(module, dataset):
    """The gradient of the mean cross-entropy over all of `dataset`, without touching `module`'s .grad."""
    params = dict(module.named_parameters())
    loss = F.cross_entropy(module(dataset.x), dataset.y)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))


# ---------------------------------------------------------------- the loss
def test_cross_entropy_of_class_ids_is_torchs():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.equal(loop.cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_soft_cross_entropy_is_the_mean_over_images_of_minus_sum_target_log_probability():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 3.0], [-2.0, 1.0, 1.0, 0.0]])
    targets = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]])
    by_hand = [-sum(t * math.log(math.exp(z) / sum(math.exp(v) for v in row)) for t, z in zip(trow, row))
               for trow, row in zip(targets.tolist(), logits.tolist())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "Implicit dimension choice for log_softmax" deprecation
        loss = loop.cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(sum(by_hand) / 3, abs=1e-6)


def test_soft_cross_entropy_is_computed_in_float32_from_half_precision_logits():
    logits = (torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 4).to(torch.bfloat16)
    targets = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    loss = loop.cross_entropy(logits, targets)
    reference = -(targets.double() * F.log_softmax(logits.double(), dim=1)).sum(1).mean()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), abs=1e-5)


def test_soft_targets_of_the_wrong_shape_say_what_to_give():
    message = "Soft targets have shape (5, 4) but the logits have (5, 3): give one probability per class."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        loop.cross_entropy(torch.randn(5, 3), torch.ones(5, 4) / 4)


def test_logits_of_a_tensor_model_and_of_a_transformers_style_output():
    class WithLogits(nn.Module):
        def forward(self, x):
            return type("Output", (), {"logits": x * 2})()

    x = torch.randn(2, 3)
    assert torch.equal(loop.logits_of(nn.Identity(), x), x)
    assert torch.equal(loop.logits_of(WithLogits(), x), x * 2)


# ---------------------------------------------------------------- precision and the Accelerator
def test_without_a_gpu_training_stays_in_float32():
    for precision in ("no", "bf16", "fp16"):
        mode, reason = loop.mixed_precision_for(dataclasses.replace(SETTINGS, precision=precision))
        assert (mode, reason) == ("no", "no CUDA GPU: a CPU gains nothing from bf16 autocast here, so training "
                                        "stays in float32")


@pytest.mark.parametrize("precision, capability, mode", [
    ("no", (8, 0), "no"), ("bf16", (8, 0), "bf16"), ("bf16", (7, 5), "fp16"), ("fp16", (8, 0), "fp16"),
    ("fp16", (7, 5), "fp16"),
])
def test_on_a_gpu_the_precision_follows_the_setting_and_the_card(monkeypatch, precision, capability, mode):
    card = hardware.Device("cuda", "a card", 16 * 2**30, capability)  # described, not used
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loop, "read_device", lambda: card)
    chosen, reason = loop.mixed_precision_for(dataclasses.replace(SETTINGS, precision=precision))
    assert chosen == mode and (chosen, reason) == hardware.precision_for(card, precision)


def test_the_accelerator_runs_on_the_cpu_in_float32_accumulating_as_set():
    accelerator = loop.make_accelerator(dataclasses.replace(SETTINGS, grad_accum=3, precision="bf16"))
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"
    assert accelerator.gradient_accumulation_steps == 3


def test_the_accelerator_is_asked_for_the_cpu_without_cuda_and_for_the_gpu_with_autocast_with_it(monkeypatch):
    asked = []
    monkeypatch.setattr(loop, "Accelerator", lambda **kwargs: asked.append(kwargs) or "an accelerator")
    settings = dataclasses.replace(SETTINGS, grad_accum=2, precision="bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.make_accelerator(settings) == "an accelerator"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loop, "read_device", lambda: hardware.Device("cuda", "a card", 16 * 2**30, (8, 0)))
    loop.make_accelerator(settings)
    # cpu=True, not accelerate's own pick (MPS, XPU): the kit promises the CPU wherever there is no CUDA GPU
    assert asked == [dict(cpu=True, mixed_precision="no", gradient_accumulation_steps=2),
                     dict(cpu=False, mixed_precision="bf16", gradient_accumulation_steps=2)]


# ---------------------------------------------------------------- one optimizer step of each kind
def fit_one_step(net, train_set, optimizer="adamw", **overrides):
    """fit() for one epoch of one batch holding all of `train_set`, constant schedule."""
    settings = dataclasses.replace(SETTINGS, epochs=1, batch_size=len(train_set), **overrides)
    return loop.fit(net, train_set, Points(3, seed=9), settings, optimizer=optimizer, schedule="constant",
                    progress=False)


def test_one_adamw_step_moves_each_weight_by_lr_against_its_gradients_sign_and_decays_matrices_only():
    net, train_set = model(), Points(8)
    before, grads = weights(net), gradient(net, train_set)
    fit_one_step(net, train_set, weight_decay=0.5)
    after, lr = weights(net), SETTINGS.lr
    # Adam's first step is lr * g / (|g| + eps), and AdamW decays the decayed group by (1 - lr * wd) first
    expected = before["linear.weight"] * (1 - lr * 0.5) - lr * grads["linear.weight"] / (
        grads["linear.weight"].abs() + 1e-8)
    assert torch.allclose(after["linear.weight"], expected, atol=1e-6)
    assert torch.allclose(after["linear.bias"], before["linear.bias"] - lr * grads["linear.bias"].sign(), atol=1e-6)
    assert torch.allclose(after["idle_weight"], before["idle_weight"] * (1 - lr * 0.5))  # a matrix: decayed
    assert torch.equal(after["idle_bias"], before["idle_bias"])  # a bias: never decayed


def test_one_sgd_step_is_lr_times_the_gradient():
    net, train_set = model(), Points(8)
    before, grads = weights(net), gradient(net, train_set)
    fit_one_step(net, train_set, optimizer="sgd", lr=0.3)
    assert torch.allclose(weights(net)["linear.weight"], before["linear.weight"] - 0.3 * grads["linear.weight"],
                          atol=1e-6)


def test_clipping_scales_the_whole_gradient_down_to_the_norm():
    net, train_set = model(), Points(8)
    before, grads = weights(net), gradient(net, train_set)
    norm = torch.sqrt(sum((g**2).sum() for g in grads.values() if g is not None))
    fit_one_step(net, train_set, optimizer="sgd", lr=0.3, max_grad_norm=float(norm) / 4)
    assert torch.allclose(weights(net)["linear.weight"], before["linear.weight"] - 0.3 * grads["linear.weight"] / 4,
                          atol=1e-6)


def test_custom_parameter_groups_replace_the_default_ones():
    net, train_set = model(), Points(8)
    before = weights(net)
    groups = [{"params": [net.linear.weight], "lr": 0.0}, {"params": [net.linear.bias, net.idle_weight]}]
    loop.fit(net, train_set, Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=1, weight_decay=0.5),
             param_groups=groups, progress=False)
    after = weights(net)
    assert torch.equal(after["linear.weight"], before["linear.weight"])  # its group's lr is 0
    assert torch.equal(after["idle_bias"], before["idle_bias"])  # in no group: never stepped
    assert not torch.equal(after["linear.bias"], before["linear.bias"])


# ---------------------------------------------------------------- gradient accumulation
def sgd_fit(batch_size, grad_accum, n=10, max_grad_norm=None, epochs=1):
    net = model()
    settings = dataclasses.replace(SETTINGS, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                                   max_grad_norm=max_grad_norm)
    history = loop.fit(net, Points(n), Points(3, seed=9), settings, optimizer="sgd", schedule="linear",
                       progress=False)
    return weights(net), history


def test_equal_micro_batches_accumulate_to_the_large_batch_even_with_clipping():
    large, _ = sgd_fit(8, 1, n=8, max_grad_norm=0.05)
    accumulated, _ = sgd_fit(2, 4, n=8, max_grad_norm=0.05)
    assert same(large, accumulated, atol=1e-6) and not same(large, weights(model()))


def test_unequal_micro_batches_accumulate_to_the_mean_over_the_windows_images():
    large, _ = sgd_fit(10, 1)
    accumulated, _ = sgd_fit(4, 3)  # micro-batches of 4, 4 and 2 images, one optimizer step
    assert same(large, accumulated, atol=1e-6)


@pytest.mark.parametrize("batch_size, grad_accum, n", [(4, 2, 6), (2, 2, 8), (3, 3, 7)])
def test_every_window_steps_on_the_mean_over_its_images(batch_size, grad_accum, n):
    # (4, 2, 6): one window of 4 + 2; (2, 2, 8): two full windows; (3, 3, 7): one window of 3 + 3 + 1
    large, _ = sgd_fit(batch_size * grad_accum, 1, n=n)
    accumulated, _ = sgd_fit(batch_size, grad_accum, n=n)
    assert same(large, accumulated, atol=1e-6) and not same(large, weights(model()))


def test_an_epoch_ends_with_a_step_even_when_its_last_window_is_short():
    _, history = sgd_fit(4, 2, n=10, epochs=2)  # 3 micro-batches per epoch: windows of 2 and 1, 2 steps
    assert history.column("lr") == pytest.approx([SETTINGS.lr / 2, 0.0], abs=1e-12)  # linear: 2 of 4, 4 of 4


# ---------------------------------------------------------------- what fit() records
class Recorder:
    """A batch transform that leaves batches alone and records each one's targets."""

    def __init__(self):
        self.targets = []

    def __call__(self, images, targets):
        self.targets.append(targets.clone())
        return images, targets


def test_history_rows_hold_the_epochs_losses_accuracy_lr_and_seconds(capsys, monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)  # a live bar, as in JupyterLab or a terminal
    net, train_set, val_set, recorder = model(), Points(10), Points(7, seed=1), Recorder()
    logits = []
    net.register_forward_hook(lambda module, args, output: logits.append(output.detach()) if module.training else None)
    started = time.perf_counter()
    history = loop.fit(net, train_set, val_set, SETTINGS, schedule="linear", batch_transform=recorder)
    elapsed = time.perf_counter() - started
    assert history.column("epoch") == [1, 2] and not history.stopped_early
    # the train loss is the mean over images: batches of 4, 4 and 2 weigh by their size
    probe, *targets = recorder.targets  # fit()'s input check sends its probe images through the transform first
    assert len(probe) == guards.PROBE_IMAGES
    per_batch = [(F.cross_entropy(z, t).item(), len(t)) for z, t in zip(logits, targets)]
    for epoch, row in enumerate(history.rows):
        batches = per_batch[3 * epoch: 3 * epoch + 3]
        assert row["train_loss"] == pytest.approx(sum(loss * n for loss, n in batches) / 10, abs=1e-6)
    # validation after the last epoch: the final weights, in eval mode, over every image of val_set
    with torch.no_grad():
        final = net(val_set.x)
    assert history.rows[-1]["val_loss"] == pytest.approx(F.cross_entropy(final, val_set.y).item(), abs=1e-6)
    assert history.rows[-1]["val_accuracy"] == pytest.approx((final.argmax(1) == val_set.y).float().mean().item())
    assert history.column("lr") == pytest.approx([SETTINGS.lr / 2, 0.0], abs=1e-12)  # linear, 3 steps of 6
    assert all(0 < row["seconds"] < elapsed for row in history.rows)
    assert not net.training and all(p.grad is None for p in net.parameters())
    bars = capsys.readouterr().err  # the progress bar is on by default, one per epoch, gone when done
    assert "epoch 1/2" in bars and "epoch 2/2" in bars and "\n" not in bars


def test_no_progress_bar_when_asked_for_none(capsys, monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)  # a live bar would draw (headless, leave=False prints nothing)
    loop.fit(model(), Points(8), Points(3, seed=9), SETTINGS, progress=False)
    assert capsys.readouterr().err == ""


def test_history_reports_the_first_groups_lr():
    net = model()
    groups = [{"params": [net.linear.weight], "lr": 0.02}, {"params": [net.linear.bias], "lr": 0.5}]
    history = loop.fit(net, Points(8), Points(3, seed=9), SETTINGS, param_groups=groups, schedule="constant",
                       progress=False)
    assert history.column("lr") == [0.02, 0.02]


def test_each_epoch_is_shuffled_differently_and_the_same_seed_repeats_everything():
    runs = []
    for seed in (0, 0, 1):
        net, train_set = model(), Points(12)
        history = loop.fit(net, train_set, Points(3, seed=9), dataclasses.replace(SETTINGS, seed=seed),
                           progress=False)
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in history.rows]
        runs.append((train_set.seen[guards.PROBE_IMAGES:], rows, weights(net)))
    (order, rows, final), (order_again, rows_again, final_again), (other_order, _, _) = runs
    first, second = order[:12], order[12:]
    assert sorted(first) == sorted(second) == list(range(12)) and first != list(range(12)) and first != second
    assert order_again == order and rows_again == rows and same(final_again, final)
    assert other_order != order


def test_num_workers_loads_both_sets_in_worker_processes():
    train_set, val_set = Points(8), Points(3, seed=9)
    loop.fit(model(), train_set, val_set, dataclasses.replace(SETTINGS, epochs=1, num_workers=1), progress=False)
    probe = list(range(guards.PROBE_IMAGES))  # the input check reads these here, before the first step
    assert train_set.seen == probe and val_set.seen == []  # every batch was read in a worker
    loop.fit(model(), train_set, val_set, dataclasses.replace(SETTINGS, epochs=1), progress=False)
    assert len(train_set.seen) == 2 * len(probe) + 8 and len(val_set.seen) == 3


def test_a_batch_transform_sees_every_batch_and_its_targets_are_trained_on():
    def soft(images, targets):
        return images, F.one_hot(targets, 3).float()

    def mislabel(images, targets):
        return images, (targets + 1) % 3

    results = {}
    for name, transform in (("none", None), ("soft", soft), ("mislabel", mislabel)):
        net = model()
        loop.fit(net, Points(10), Points(3, seed=9), SETTINGS, batch_transform=transform, progress=False)
        results[name] = weights(net)
    assert same(results["none"], results["soft"], atol=1e-6) and not same(results["none"], results["mislabel"])


def test_train_step_without_a_scheduler_steps_the_optimizer_only():
    net, train_set = model(), Points(8)
    accelerator = loop.make_accelerator(SETTINGS)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before, grads = weights(net), gradient(net, train_set)
    loss = loop.train_step(net, train_set.x, train_set.y, optimizer, None, accelerator)
    assert loss.item() == pytest.approx(F.cross_entropy(model()(train_set.x), train_set.y).item(), abs=1e-6)
    assert not loss.requires_grad
    assert torch.allclose(weights(net)["linear.weight"], before["linear.weight"] - 0.1 * grads["linear.weight"])
    assert all(p.grad is None for p in net.parameters())  # set to None, not zero tensors kept between steps


def test_validate_averages_over_images_in_eval_mode():
    net = model(dropout=0.9).train()
    val_set = Points(7, seed=1)
    loader = loop.loader_for(val_set, 3)  # batches of 3, 3 and 1
    loss, accuracy = loop.validate(net, loader, loop.make_accelerator(SETTINGS))
    with torch.no_grad():
        logits = net.eval()(val_set.x)
    assert loss == pytest.approx(F.cross_entropy(logits, val_set.y).item(), abs=1e-6)
    assert accuracy == pytest.approx((logits.argmax(1) == val_set.y).float().mean().item())


def test_loader_for_serves_batches_in_order_or_shuffled_by_the_generator():
    points = Points(10)
    plain = loop.loader_for(points, 4)
    assert plain.num_workers == 0 and [len(y) for _, y in plain] == [4, 4, 2] and points.seen == list(range(10))
    points.seen.clear()
    shuffled = loop.loader_for(points, 4, shuffle_generator=torch.Generator().manual_seed(0))
    list(shuffled)
    assert sorted(points.seen) == list(range(10)) and points.seen != list(range(10))
    spec = data.ImageSpec((8, 8), (0.5,) * 3, (0.5,) * 3)
    images = data.TensorImages(torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 8, 8).to(torch.uint8),
                               list(range(10)), [str(i) for i in range(10)])
    device_images = DeviceImages.from_dataset(images, spec)
    assert [y.tolist() for _, y in loop.loader_for(device_images, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    drawn = [y.tolist() for _, y in loop.loader_for(device_images, 4, shuffle_generator=torch.Generator())]
    assert [len(y) for y in drawn] == [4, 4, 2] and sorted(sum(drawn, [])) == list(range(10))
    assert sum(drawn, []) != list(range(10))


def test_loader_workers_end_with_each_pass():
    loader = loop.loader_for(Points(8), 4, num_workers=1, shuffle_generator=torch.Generator())
    assert loader.num_workers == 1 and loader.persistent_workers is False


class GraphRecorder:
    """A torch.compile backend that runs each graph as traced and records the example inputs it was given."""

    def __init__(self):
        self.inputs = []

    def __call__(self, graph_module, example_inputs):
        self.inputs.append(list(example_inputs))
        return graph_module.forward

    def batch_shapes(self):
        """The shape of each graph's batch input (its non-parameter tensors)."""
        return [tuple(x.shape) for inputs in self.inputs for x in inputs
                if isinstance(x, torch.Tensor) and not isinstance(x, nn.Parameter)]


def test_maybe_compile_hands_the_backend_static_graphs_one_per_batch_shape():
    torch._dynamo.reset()  # no graphs, recompile counts or dynamic-shape marks left by earlier tests
    recorder, net = GraphRecorder(), model()
    compiled = loop.maybe_compile(net, recorder)
    for size in (4, 3, 2):
        assert torch.equal(compiled(torch.ones(size, 4)), net(torch.ones(size, 4)))
    assert recorder.batch_shapes() == [(4, 4), (3, 4), (2, 4)]  # a graph per shape, none with a symbolic size
    assert not any(isinstance(x, torch.SymInt) for inputs in recorder.inputs for x in inputs)


def test_fit_compiles_with_the_backend_it_is_given():
    torch._dynamo.reset()
    recorder = GraphRecorder()
    loop.fit(model(), Points(8), Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=1), torch_compile=recorder,
             progress=False)
    assert set(recorder.batch_shapes()) == {(4, 4), (3, 4)}  # the training batches of 4, the validation batch of 3


def test_auto_compiles_only_on_a_gpu_and_only_once_the_gpu_measurement_says_so(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # devices described, not used: no GPU needed
    assert loop.compile_backend("auto", cpu) is None and loop.maybe_compile(net := nn.Linear(2, 2), "auto") is net
    assert loop.compile_backend("auto", gpu) == ("inductor" if loop.COMPILE_ON_GPU else None)
    monkeypatch.setattr(loop, "COMPILE_ON_GPU", True)
    assert (loop.compile_backend("auto", cpu), loop.compile_backend("auto", gpu)) == (None, "inductor")
    assert (loop.compile_backend("auto", "cuda"), loop.compile_backend("auto", "cpu")) == ("inductor", None)
    assert loop.compile_backend(True, cpu) == "inductor" and loop.compile_backend("aot_eager", gpu) == "aot_eager"
    assert loop.compile_backend(False, gpu) is None
    monkeypatch.setattr(loop, "COMPILE_ON_GPU", False)
    assert (loop.compile_backend("auto", cpu), loop.compile_backend("auto", gpu)) == (None, None)


def test_maybe_compile_asks_about_the_device_of_the_models_parameters(monkeypatch):
    asked = []
    monkeypatch.setattr(loop, "compile_backend", lambda torch_compile, device: asked.append((torch_compile, device)))
    on_meta, without_parameters = nn.Linear(2, 2, device="meta"), nn.Identity()
    assert loop.maybe_compile(on_meta, "auto") is on_meta  # compile_backend said None: eager
    assert loop.maybe_compile(without_parameters, "auto") is without_parameters
    assert asked == [("auto", torch.device("meta")), ("auto", "cpu")]


def test_a_model_without_parameters_stays_eager(monkeypatch):
    identity = nn.Identity()
    assert loop.maybe_compile(identity, False) is identity
    monkeypatch.setattr(loop, "COMPILE_ON_GPU", True)
    assert loop.maybe_compile(identity, "auto") is identity  # taken to be on the CPU


def test_maybe_compile_wraps_only_when_asked():
    net = model()
    assert loop.maybe_compile(net, False) is net
    for backend in (True, "eager"):
        compiled = loop.maybe_compile(net, backend)  # compiles lazily, at the first call
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is net


def test_seed_everything_seeds_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        loop.seed_everything(2**32 + 5)  # numpy takes seeds below 2**32: it gets 5
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    np.random.seed(5)
    assert draws[0][1] == np.random.rand()
    random.seed(2**32 + 5)
    torch.manual_seed(2**32 + 5)
    assert (draws[0][0], draws[0][2]) == (random.random(), torch.rand(1).item())


# ---------------------------------------------------------------- bad calls
@pytest.mark.parametrize("call, message", [
    (dict(train_set=Points(0)), "The training and validation sets must each hold at least one image."),
    (dict(val_set=Points(0)), "The training and validation sets must each hold at least one image."),
    (dict(resume=True), "resume=True needs a checkpoint_dir to work on."),
    (dict(overwrite=True), "overwrite=True needs a checkpoint_dir to work on."),
    (dict(gradient_checkpointing=True), "gradient_checkpointing=True needs a transformers model; a WithIdle cannot "
                                        "recompute its layers: leave the setting off for it."),
    (dict(patience=0), "patience must be at least 1 epoch (or None for no early stopping), got 0."),
])
def test_bad_calls_say_what_is_wrong(call, message):
    arguments = {"train_set": Points(1), "val_set": Points(1), **call}
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        loop.fit(model(), arguments.pop("train_set"), arguments.pop("val_set"), SETTINGS, progress=False,
                 **arguments)


def test_one_image_each_is_enough_and_patience_one_is_allowed():
    history = loop.fit(model(), Points(1), Points(1), SETTINGS, patience=1, progress=False)
    assert len(history) >= 1


# ---------------------------------------------------------------- early stopping and the best epoch
def scripted(monkeypatch, accuracies):
    """fit() sees these validation accuracies, epoch after epoch (the model still trains)."""
    scores = iter(accuracies)
    monkeypatch.setattr(loop, "validate", lambda model, loader, accelerator: (1.0, next(scores)))


@pytest.mark.parametrize("accuracies, patience, epochs_run, stopped", [
    ([0.5, 0.8, 0.8, 0.7, 0.9, 0.9], 2, 4, True),  # best at 2, no better at 3 and 4
    ([0.9, 0.5, 0.5], 1, 2, True),  # stops at the second of three epochs
    ([0.9, 0.5], 1, 2, False),  # patience runs out at the last epoch: the run simply ended
    ([0.5, 0.6, 0.7], 1, 3, False),
])
def test_early_stopping_after_patience_epochs_without_improvement(monkeypatch, accuracies, patience, epochs_run,
                                                                  stopped):
    scripted(monkeypatch, accuracies)
    history = loop.fit(model(), Points(8), Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=len(accuracies)),
                       patience=patience, progress=False)
    assert len(history) == epochs_run and history.stopped_early is stopped


def weights_after(monkeypatch, accuracies, epochs, **options):
    scripted(monkeypatch, accuracies)
    net = model()
    loop.fit(net, Points(8), Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=epochs), progress=False,
             **options)
    return weights(net)


@pytest.mark.parametrize("accuracies, best", [([0.5, 0.9, 0.6, 0.7], 2), ([0.5, 0.9, 0.6], 2), ([0.5, 0.6], 2)])
def test_restore_best_ends_with_the_weights_of_the_best_epoch(monkeypatch, tmp_path, accuracies, best):
    expected = weights_after(monkeypatch, accuracies, len(accuracies), stop_after=best)
    restored = weights_after(monkeypatch, accuracies, len(accuracies), restore_best=True,
                             checkpoint_dir=tmp_path / "run")
    assert same(restored, expected)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_without_restore_best_the_last_epoch_stays_and_no_best_weights_are_written(monkeypatch, tmp_path):
    last = weights_after(monkeypatch, [0.5, 0.9, 0.6], 3)
    kept = weights_after(monkeypatch, [0.5, 0.9, 0.6], 3, checkpoint_dir=tmp_path)
    assert same(kept, last) and sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003", "latest"]


# ---------------------------------------------------------------- checkpoints and resume
def noisy(images, targets):
    """An augmentation drawing from every random generator fit() restores: Python's, NumPy's and torch's."""
    return images + 0.1 * torch.randn_like(images) + random.random() + np.random.rand(), targets


def run(checkpoint_dir=None, epochs=3, seed=0, **options):
    net = model(seed=seed, dropout=0.3)
    history = loop.fit(net, Points(10), Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=epochs),
                       batch_transform=noisy, checkpoint_dir=checkpoint_dir, progress=False, **options)
    return net, [{k: v for k, v in row.items() if k != "seconds"} for row in history.rows]


def scramble_random_state():
    """What a fresh process would have: other random states everywhere."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def test_resume_with_dropout_and_augmentation_repeats_the_uninterrupted_run_exactly(tmp_path):
    uninterrupted, rows = run()
    _, first = run(tmp_path, stop_after=1)
    assert len(first) == 1 and (tmp_path / "latest").read_text() == "epoch-0001"
    scramble_random_state()
    resumed, resumed_rows = run(tmp_path, seed=99, resume=True)  # other starting weights: the checkpoint's win
    assert resumed_rows == rows and same(weights(resumed), weights(uninterrupted))


def test_resume_without_the_saved_random_state_is_refused(tmp_path):
    run(tmp_path, stop_after=1)
    (tmp_path / "epoch-0001" / "rng-0.pt").unlink()
    with pytest.raises(CheckpointError, match="rng-0.pt is missing"):  # not resumed with other random draws
        run(tmp_path, resume=True)


def test_stop_after_counts_the_epochs_of_this_call(tmp_path):
    _, rows = run(tmp_path, epochs=4, stop_after=1)
    assert [r["epoch"] for r in rows] == [1]
    _, rows = run(tmp_path, epochs=4, resume=True, stop_after=2)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    _, rows = run(tmp_path, epochs=4, resume=True)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_the_manifest_holds_the_fingerprint_of_the_run(tmp_path):
    run(tmp_path, epochs=1, optimizer="sgd", schedule="linear")
    fingerprint = json.loads((tmp_path / "epoch-0001" / "manifest.json").read_text())["fingerprint"]
    assert {name: fingerprint.get(name) for name in ("optimizer", "schedule", "processes", "lr", "epochs",
                                                     "train_images")} == dict(
        optimizer="sgd", schedule="linear", processes=1, lr=0.1, epochs=1, train_images=10)


def test_resuming_with_another_lr_is_refused_and_names_it(tmp_path):
    run(tmp_path, stop_after=1)
    message = (f"Cannot resume from {tmp_path}/epoch-0001: lr was 0.1 and is now 0.2; resume with what the run was "
               "trained with, or start a new run with overwrite=True or another checkpoint_dir.")
    with pytest.raises(CheckpointError, match="^" + re.escape(message) + "$"):
        run(tmp_path, resume=True, lr=0.2)


def test_a_folder_holding_a_finished_run_is_refused_and_overwrite_starts_afresh(tmp_path):
    run(tmp_path, epochs=2)
    message = (f"{tmp_path} holds the checkpoints of an earlier run (epoch-0002, latest): resume it with resume=True, "
               "choose another checkpoint_dir, or pass overwrite=True to delete them and start afresh.")
    with pytest.raises(CheckpointError, match="^" + re.escape(message) + "$"):
        run(tmp_path, epochs=2)
    assert (tmp_path / "latest").read_text() == "epoch-0002"  # nothing deleted
    _, rows = run(tmp_path, epochs=1, overwrite=True)
    assert [r["epoch"] for r in rows] == [1] and sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "latest"]


def test_resuming_a_finished_run_with_restore_best_keeps_its_last_and_best_epoch(monkeypatch, tmp_path):
    last = weights_after(monkeypatch, [0.5, 0.9], 2, checkpoint_dir=tmp_path)  # the last epoch is the best
    again = weights_after(monkeypatch, [], 2, checkpoint_dir=tmp_path, resume=True, restore_best=True)
    assert same(again, last)  # no epoch left to train, and nothing to restore


# ---------------------------------------------------------------- a loss that is not finite
class NaNFromEpoch:
    """A batch transform that turns the images to NaN from epoch `epoch` on (fit's input probe comes first)."""

    def __init__(self, epoch: int, batches_per_epoch: int):
        self.first_nan_call, self.calls = 1 + (epoch - 1) * batches_per_epoch + 1, 0

    def __call__(self, images, targets):
        self.calls += 1
        return (images * float("nan") if self.calls >= self.first_nan_call else images), targets


@pytest.mark.parametrize("epoch, folder, kept, reuse", [
    (2, True, "the last good checkpoint, {folder}/epoch-0001, is kept", ", with overwrite=True to reuse the folder"),
    (1, True, "no checkpoint of this run was written", ", with overwrite=True to reuse the folder"),
    (2, False, "nothing was saved (no checkpoint_dir)", ""),
    (1, False, "nothing was saved (no checkpoint_dir)", ""),
])
def test_a_loss_that_turns_nan_stops_training_in_one_sentence_naming_what_is_kept(tmp_path, epoch, folder, kept,
                                                                                   reuse):
    net, checkpoint_dir = model(), tmp_path / "run" if folder else None
    message = (f"The training loss is nan in epoch {epoch}, so training stopped before that step and "
               f"{kept.format(folder=checkpoint_dir)}: train again with a lower lr (now 0.1) or with gradient "
               f"clipping (max_grad_norm, now None){reuse}.")
    with pytest.raises(FloatingPointError, match="^" + re.escape(message) + "$"):
        loop.fit(net, Points(8), Points(3, seed=9), dataclasses.replace(SETTINGS, epochs=3),
                 batch_transform=NaNFromEpoch(epoch, batches_per_epoch=2), checkpoint_dir=checkpoint_dir,
                 progress=False)
    assert all(torch.isfinite(w).all() for w in weights(net).values())
    if folder:
        assert sorted(p.name for p in checkpoint_dir.iterdir()) == (["epoch-0001", "latest"] if epoch == 2 else [])
