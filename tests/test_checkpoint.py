"""helpers.train.checkpoint: what a checkpoint restores, that saving leaves no half-written files, the best
epoch's weights in memory and on disk, the random state, and `left_as_it_was`."""
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from helpers import profiles
from helpers.train import checkpoint, loop
from helpers.train.history import History

SETTINGS = profiles.resolve("smoke", epochs=2, batch_size=4, lr=0.1)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def trained_parts(seed=0):
    """A prepared model, AdamW with state, a scheduler two steps in, and the accelerator."""
    accelerator = loop.make_accelerator(SETTINGS)
    model = net(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model, optimizer, scheduler, accelerator


def history(epochs):
    return History([dict(epoch=e, train_loss=1.0 / e, val_loss=1.0, val_accuracy=0.1 * e, lr=0.1, seconds=1.0)
                    for e in range(1, epochs + 1)])


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_restores_weights_optimizer_schedule_history_and_random_state(tmp_path):
    model, optimizer, scheduler, accelerator = trained_parts()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    folder = checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(3))
    expected_draws = (torch.rand(3), random.random(), np.random.rand())
    assert folder == tmp_path / "epoch-0003" and (tmp_path / "latest").read_text() == "epoch-0003"

    other, other_optimizer, other_scheduler, _ = trained_parts(seed=5)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    epoch, restored = checkpoint.load_checkpoint(tmp_path, accelerator, other, other_optimizer, other_scheduler)
    assert epoch == 3 and restored.rows == history(3).rows
    assert equal_states(state_of(other), state_of(model))
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    assert all(torch.equal(value, loaded["state"][i][key])
               for i, moments in saved["state"].items() for key, value in moments.items())
    assert other_scheduler.state_dict() == scheduler.state_dict() and other_scheduler.get_last_lr() == [0.1 / 3]
    draws = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]


def test_saving_keeps_only_the_newest_epoch_and_leaves_no_temporary_files(tmp_path):
    # (a staging folder an interrupted save left behind is cleaned when a run claims the folder: test_faults)
    model, optimizer, scheduler, accelerator = trained_parts()
    for epochs in (1, 2):
        checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(epochs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "latest"]
    checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(2))  # the same epoch again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "latest"]


def test_a_checkpoint_written_into_a_new_nested_folder(tmp_path):
    model, optimizer, scheduler, accelerator = trained_parts()
    checkpoint.save_checkpoint(tmp_path / "a" / "b", accelerator, model, optimizer, scheduler, history(1))
    assert (tmp_path / "a" / "b" / "latest").read_text() == "epoch-0001"


def test_load_without_a_checkpoint_says_what_to_do(tmp_path):
    model, optimizer, scheduler, accelerator = trained_parts()
    message = f"No checkpoint in {tmp_path}: train once with checkpoint_dir set (resume=False)."
    with pytest.raises(FileNotFoundError, match="^" + re.escape(message) + "$"):
        checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler)


def test_the_pointer_file_is_read_without_its_trailing_newline(tmp_path):
    model, optimizer, scheduler, accelerator = trained_parts()
    checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(2))
    (tmp_path / "latest").write_text("epoch-0002\n")  # as an editor would save it
    epoch, _ = checkpoint.load_checkpoint(tmp_path, accelerator, *trained_parts(seed=3)[:3])
    assert epoch == 2


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest"
    target.write_text("old")
    checkpoint.write_atomically(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_rng_state_round_trip_repeats_every_generators_draws():
    state = checkpoint.rng_state()
    generators = {"python", "python_version", "python_gauss", "numpy", "numpy_position", "numpy_gauss", "torch"}
    assert set(state) == (generators | {"cuda"} if torch.cuda.is_available() else generators)
    first = (random.random(), np.random.rand(), torch.rand(2))
    checkpoint.set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_set_rng_state_takes_a_state_without_cuda_on_any_machine():
    state = checkpoint.rng_state()
    state.pop("cuda", None)
    checkpoint.set_rng_state(state)  # saved on a CPU machine, restored anywhere


def test_best_weights_are_kept_in_memory_and_on_disk_and_restored(tmp_path):
    model, _, _, accelerator = trained_parts()
    best_state = state_of(model)
    best = checkpoint.BestWeights(accelerator, tmp_path / "run" / "best")
    best.keep(model)
    best.keep(model)  # again, into the existing folder
    assert [p.name for p in (tmp_path / "run" / "best").iterdir()] == ["model.safetensors"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    best.restore(model)
    assert equal_states(state_of(model), best_state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    checkpoint.BestWeights(accelerator, tmp_path / "run" / "best").restore(model)  # after a resume: from disk
    assert equal_states(state_of(model), best_state)


def test_best_weights_in_memory_only_without_a_folder(tmp_path):
    model, _, _, accelerator = trained_parts()
    best = checkpoint.BestWeights(accelerator, None)
    best.keep(model)
    kept = state_of(model)
    with torch.no_grad():
        model[0].weight.zero_()
    best.restore(model)
    assert equal_states(state_of(model), kept)


@pytest.mark.parametrize("folder", [None, "missing"])
def test_restoring_best_weights_never_kept_says_why(tmp_path, folder):
    model, _, _, accelerator = trained_parts()
    best = checkpoint.BestWeights(accelerator, None if folder is None else tmp_path / folder)
    message = ("The best epoch was trained before this resume and its weights were not saved: resume with "
               "restore_best=True only when the first call used it too.")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(message) + "$"):
        best.restore(model)


def test_plain_model_unwraps_what_prepare_and_compile_wrapped():
    accelerator = loop.make_accelerator(SETTINGS)
    model = net()
    prepared = accelerator.prepare(model)
    assert checkpoint.plain_model(accelerator, prepared) is model
    assert checkpoint.plain_model(accelerator, torch.compile(prepared, backend="eager")) is model


def test_left_as_it_was_restores_weights_modes_optimizer_random_state_and_clears_gradients():
    model, optimizer, _, _ = trained_parts()
    model[2].eval()  # a mixed train/eval state
    weights, modes = state_of(model), [m.training for m in model.modules()]
    saved_optimizer = optimizer.state_dict()
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in saved_optimizer["state"].items()}
    lrs = [g["lr"] for g in optimizer.param_groups]
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    with checkpoint.left_as_it_was(model, optimizer):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = 10.0
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
    assert equal_states(state_of(model), weights) and [m.training for m in model.modules()] == modes
    after = optimizer.state_dict()
    assert [g["lr"] for g in optimizer.param_groups] == lrs
    assert all(torch.equal(after["state"][i][k], moments[i][k]) for i in moments for k in moments[i])
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(2), expected)


def test_left_as_it_was_without_an_optimizer_and_after_an_error():
    model = net()
    weights = state_of(model)
    with pytest.raises(RuntimeError, match="stop"):
        with checkpoint.left_as_it_was(model):
            with torch.no_grad():
                model[0].weight.zero_()
            raise RuntimeError("stop")
    assert equal_states(state_of(model), weights)
