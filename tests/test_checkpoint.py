"""helpers.train.checkpoint: what a checkpoint restores, that saving leaves no half-written files, the manifest,
the one sentence for each checkpoint that cannot be saved or resumed, the best epoch's weights in memory and on disk,
the random state, and `left_as_it_was`."""
import hashlib
import json
import pickle
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


def net(seed=0, width=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 3))


def trained_parts(seed=0, width=8):
    """A prepared model, AdamW with state, a scheduler two steps in, and the accelerator."""
    accelerator = loop.make_accelerator(SETTINGS)
    model = net(seed, width)
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


class Payload:
    """Not a tensor, number or text: `torch.load(weights_only=True)` must refuse a file holding one."""


def saved_checkpoint(folder, epochs=2, fingerprint=None):
    """A checkpoint of `trained_parts()` written into `folder`; returns its epoch folder."""
    model, optimizer, scheduler, accelerator = trained_parts()
    return checkpoint.save_checkpoint(folder, accelerator, model, optimizer, scheduler, history(epochs), fingerprint)


def sha256(file):
    return hashlib.sha256(file.read_bytes()).hexdigest()


def rehash(folder):
    """Rewrite the manifest's checksums after a test changed a file, as if the checkpoint had been written so."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: sha256(folder / name) for name in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def unreadable(file, error: str) -> str:
    """The sentence for a checkpoint file that cannot be read, `error` being the error's first line."""
    return (f"{file} could not be read ({error}): it is damaged or not part of a checkpoint of this kit, so start "
            "afresh with overwrite=True.")


def test_the_manifest_lists_each_file_with_its_sha256_the_epoch_and_the_fingerprint(tmp_path):
    fingerprint = {"lr": 0.1, "epochs": 3, "seed": 0}
    folder = saved_checkpoint(tmp_path / "with", epochs=3, fingerprint=fingerprint)
    names = ["model.safetensors", "rng-0.pt", "training_state.pt"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "manifest.json"])
    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest == {"epoch": 3, "files": {name: sha256(folder / name) for name in names},
                        "fingerprint": fingerprint}
    assert text == json.dumps(manifest, indent=1)  # one key a line, one space deep: readable in a lesson
    assert json.loads((saved_checkpoint(tmp_path / "without") / "manifest.json").read_text())["fingerprint"] == {}


def test_a_failed_save_removes_its_staging_folder_says_how_much_room_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch):
    model, optimizer, scheduler, accelerator = trained_parts(width=2**15)  # 262,147 weights: 1 MB, 3 MB with AdamW
    checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(1))
    before = {p.name: p.read_bytes() for p in (tmp_path / "epoch-0001").iterdir()}

    def full_disk(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed\nat line 1")
    monkeypatch.setattr(torch, "save", full_disk)
    message = (f"Could not write checkpoint epoch-0002 into {tmp_path} (RuntimeError: PytorchStreamWriter failed "
               "writing file data/0: file write failed): one checkpoint takes about 3.0 MB and the folder needs room "
               "for two while a new one is written, so free some space or choose another checkpoint_dir (the previous "
               "checkpoint is intact).")
    with pytest.raises(OSError, match="^" + re.escape(message) + "$"):
        checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "latest"]
    assert (tmp_path / "latest").read_text() == "epoch-0001"
    assert {p.name: p.read_bytes() for p in (tmp_path / "epoch-0001").iterdir()} == before


def test_saving_succeeds_when_an_older_entry_cannot_be_removed(tmp_path):
    (tmp_path / "epoch-0001.zip").write_bytes(b"a backup the user keeps here")  # matches epoch-*, not a folder
    folder = saved_checkpoint(tmp_path, epochs=2)
    assert (tmp_path / "latest").read_text() == "epoch-0002" and folder.is_dir()
    assert (tmp_path / "epoch-0001.zip").read_bytes() == b"a backup the user keeps here"


def test_a_missing_pointer_beside_several_epoch_folders_says_which_could_be_resumed(tmp_path):
    for name in ("epoch-0002", "epoch-0003"):
        (tmp_path / name).mkdir()
    pointer = tmp_path / "latest"
    message = (f"{pointer} is missing, so it is not known which of epoch-0002, epoch-0003 is complete: write the name "
               f"of the one to resume from into {pointer}, or start afresh with overwrite=True.")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.latest_checkpoint(tmp_path)
    missing = tmp_path / "never-made"
    message = f"No checkpoint in {missing}: train once with checkpoint_dir set (resume=False)."
    with pytest.raises(FileNotFoundError, match="^" + re.escape(message) + "$"):
        checkpoint.latest_checkpoint(missing)


@pytest.mark.parametrize("held", [b"epoch-0009", b"backup", b"epoch-0007", b"\xff" + b"x" * 99])
def test_a_pointer_naming_no_epoch_folder_of_its_own_is_refused(tmp_path, held):
    (tmp_path / "epoch-0002").mkdir()
    (tmp_path / "backup").mkdir()
    (tmp_path / "epoch-0007").symlink_to(tmp_path / "epoch-0002")  # a link, maybe to another run's folder
    pointer = tmp_path / "latest"
    pointer.write_bytes(held)
    name = held.decode(errors="replace")  # not UTF-8: still a sentence, not a UnicodeDecodeError
    message = (f"{pointer} should name a checkpoint folder inside {tmp_path} such as epoch-0003, but it holds "
               f"{name[:60]!r}: write the name of an epoch folder there, or start afresh with overwrite=True.")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.latest_checkpoint(tmp_path)


def test_a_manifest_that_is_not_json_is_refused_in_one_sentence(tmp_path):
    folder = saved_checkpoint(tmp_path)
    (folder / "manifest.json").write_text("")
    message = unreadable(folder / "manifest.json", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.verified_manifest(folder, 0)


def test_a_process_the_run_did_not_have_is_refused(tmp_path):
    folder = saved_checkpoint(tmp_path)  # one process: rng-0.pt only
    message = (f"{folder / 'rng-1.pt'} is not part of this checkpoint (its manifest does not list it): resume with "
               "as many processes as the run used, or start afresh with overwrite=True.")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.verified_manifest(folder, 1)


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_damaged_or_missing_file_is_refused_with_its_name(tmp_path, damage):
    folder = saved_checkpoint(tmp_path)
    file = folder / "model.safetensors"
    if damage == "changed":
        file.write_bytes(file.read_bytes()[:-1] + b"\0")
    else:
        file.unlink()
    state = "damaged (its sha256 differs from the manifest's)" if damage == "changed" else "missing"
    message = (f"{file} is {state}: this checkpoint cannot be trusted, so start afresh with overwrite=True (or "
               "restore the file from a backup).")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.verified_manifest(folder, 0)


def test_resuming_another_run_names_every_difference_and_changes_nothing(tmp_path):
    folder = saved_checkpoint(tmp_path, fingerprint={"lr": 0.1, "seed": 0, "epochs": 2})
    model, optimizer, scheduler, accelerator = trained_parts(seed=3)
    weights = state_of(model)
    message = (f"Cannot resume from {folder}: lr was 0.1 and is now 0.2; seed was 0 and is now 1; resume with what the "
               "run was trained with, or start a new run with overwrite=True or another checkpoint_dir.")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler,
                                   {"lr": 0.2, "seed": 1, "epochs": 2})
    assert equal_states(state_of(model), weights)
    epoch, _ = checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler,
                                          {"lr": 0.1, "seed": 0, "epochs": 5})  # a longer run resumes
    assert epoch == 2


def test_weights_of_another_model_are_refused_in_one_sentence(tmp_path):
    model, optimizer, scheduler, accelerator = trained_parts(width=16)
    folder = checkpoint.save_checkpoint(tmp_path, accelerator, model, optimizer, scheduler, history(1))
    message = unreadable(folder / "model.safetensors", "RuntimeError: Error(s) in loading state_dict for Sequential:")
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.load_checkpoint(tmp_path, accelerator, *trained_parts()[:3])


@pytest.mark.parametrize("name", ["training_state.pt", "rng-0.pt"])
def test_a_file_holding_python_objects_is_never_unpickled(tmp_path, monkeypatch, name):
    # weights_only=True is passed explicitly: this variable turns only torch's default off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    folder = saved_checkpoint(tmp_path)
    contents = torch.load(folder / name, weights_only=True)
    torch.save({**contents, "payload": Payload()}, folder / name)
    rehash(folder)
    message = unreadable(folder / name, "UnpicklingError: it holds Python objects, not only tensors and numbers, "
                                        "and is not unpickled")
    model, optimizer, scheduler, accelerator = trained_parts(seed=3)
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(message) + "$"):
        checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler)


def test_every_file_is_loaded_onto_the_cpu_as_tensors_only(tmp_path, monkeypatch):
    # (so a checkpoint written on a GPU resumes on a machine without one)
    saved_checkpoint(tmp_path)
    calls, real_load = [], torch.load

    def recording_load(file, **kwargs):
        calls.append((file.name, kwargs))
        return real_load(file, **kwargs)
    model, optimizer, scheduler, accelerator = trained_parts(seed=3)
    monkeypatch.setattr(torch, "load", recording_load)
    checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler)
    expected = {"weights_only": True, "map_location": "cpu"}
    assert calls == [("training_state.pt", expected), ("rng-0.pt", expected)]


def test_a_resume_sets_the_learning_rate_on_the_new_runs_schedule(tmp_path):
    saved_checkpoint(tmp_path)  # its schedule: 1 / (step + 1), two steps in: lr 0.1 / 3
    model, optimizer, _, accelerator = trained_parts(seed=3)
    # another run's curve (a longer one): at step 2 it is at half the base lr
    longer = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 if step == 2 else 0.0)
    checkpoint.load_checkpoint(tmp_path, accelerator, model, optimizer, longer)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1 * 0.5]


def test_the_cuda_generators_are_saved_and_restored_when_there_is_a_gpu(monkeypatch):
    # torch.cuda's generator calls, stood in for on a machine without a GPU: what is saved and what is put back
    cuda_states, put_back = [torch.tensor([1, 2], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", put_back.append)
    state = checkpoint.rng_state()
    assert state["cuda"] is cuda_states
    checkpoint.set_rng_state(state)
    assert len(put_back) == 1 and put_back[0] is cuda_states
    del state["cuda"]
    checkpoint.set_rng_state(state)  # saved on a CPU machine, restored on a GPU one: the GPU's generators stay
    assert len(put_back) == 1


def test_damaged_best_weights_on_disk_are_refused_in_one_sentence(tmp_path):
    model, _, _, accelerator = trained_parts()
    checkpoint.BestWeights(accelerator, tmp_path).keep(model)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    sentence = unreadable(tmp_path / "model.safetensors", "SafetensorError: WORDS")  # safetensors' own words vary
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(sentence).replace("WORDS", ".+") + "$"):
        checkpoint.BestWeights(accelerator, tmp_path).restore(model)


@pytest.mark.parametrize("error, line", [
    (ValueError("  bad value\nsecond line\n"), "ValueError: bad value"),
    (OSError(), "OSError"),
    (RuntimeError("x" * 250), "RuntimeError: " + "x" * 200),
    (pickle.UnpicklingError("Weights only load failed.\nPlease file an issue"),
     "UnpicklingError: it holds Python objects, not only tensors and numbers, and is not unpickled"),
], ids=["its first line", "no message", "a long line", "weights_only's refusal"])
def test_first_line_names_the_error_in_a_few_words(error, line):
    assert checkpoint.first_line(error) == line
