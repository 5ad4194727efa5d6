"""`fit()` under faults made for real: a process killed mid-epoch or mid-write, a second process on the same folder,
a full disk, files truncated, flipped or crafted to run code, a different run resumed, a loss that turns NaN, and the
inputs that used to train silently wrong."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tiny_training import SETTINGS, SPEC, bright_or_dark, same_weights, tiny_vit, weights
from torchvision.transforms import v2

from helpers import data, train
from helpers.train.checkpoint import CheckpointError
from helpers.train.rundir import FolderInUse

ROOT = Path(__file__).resolve().parent.parent


def history_rows(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.rows]


def interrupted_run(folder, epochs=3, stop_after=1, **overrides):
    """A run of `epochs` stopped after `stop_after`, with its checkpoint in `folder`."""
    train.fit(tiny_vit(), bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=epochs,
              checkpoint_dir=folder, stop_after=stop_after, progress=False, **overrides)
    return folder


def resume(folder, model=None, train_set=None, **overrides):
    return train.fit(model or tiny_vit(seed=99), train_set or bright_or_dark(64), bright_or_dark(16, seed=1),
                     SETTINGS, checkpoint_dir=folder, resume=True, progress=False, **{"epochs": 3, **overrides})


def start_script(script: str, *args) -> subprocess.Popen:
    """A Python process running `script` with the kit and these tests importable."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                   "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, seconds=300):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


# ---------------------------------------------------------------- a run owns its folder
def test_a_fresh_run_refuses_a_folder_holding_a_finished_run_and_overwrite_starts_afresh(tmp_path):
    interrupted_run(tmp_path, epochs=2, stop_after=None)
    before = (tmp_path / "epoch-0002" / "manifest.json").read_text()
    with pytest.raises(CheckpointError, match=r"holds the checkpoints of an earlier run \(epoch-0002, latest\): "
                                              r"resume it with resume=True.*overwrite=True"):
        interrupted_run(tmp_path, epochs=2, stop_after=None)
    assert (tmp_path / "epoch-0002" / "manifest.json").read_text() == before  # nothing deleted
    interrupted_run(tmp_path, epochs=3, stop_after=1, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "latest"]
    with pytest.raises(ValueError, match="pass one"):
        resume(tmp_path, overwrite=True)


def test_a_killed_run_keeps_its_folder_from_others_and_resumes_bit_identically(tmp_path):
    folder, marker = tmp_path / "run", tmp_path / "in-epoch-2"
    process = start_script("""
        import sys, time
        from pathlib import Path
        from helpers import train
        from tiny_training import SETTINGS, bright_or_dark, tiny_vit
        folder, marker = Path(sys.argv[1]), Path(sys.argv[2])

        def pause_in_epoch_two(images, labels):  # the identity, so the numbers are those of a plain run
            if (folder / "latest").exists():
                marker.touch()
                time.sleep(600)
            return images, labels

        train.fit(tiny_vit(), bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
                  checkpoint_dir=folder, batch_transform=pause_in_epoch_two, progress=False)
    """, folder, marker)
    try:
        wait_for(marker, process)
        with pytest.raises(FolderInUse, match=rf"in use by another training process \(PID {process.pid}\)"):
            resume(folder)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert (folder / "latest").read_text() == "epoch-0001"
    uninterrupted = tiny_vit()
    full = train.fit(uninterrupted, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
                     progress=False)
    restarted = tiny_vit(seed=99)
    assert history_rows(resume(folder, restarted)) == history_rows(full)
    assert same_weights(weights(restarted), weights(uninterrupted))


FILL_THE_DISK = """
    import resource, signal, sys
    from pathlib import Path
    from helpers import train
    from tiny_training import SETTINGS, bright_or_dark, tiny_vit
    folder = Path(sys.argv[1])
    # ignored (Python's default), a write past the limit fails; with the system's default, it kills the process
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL if sys.argv[2] == "die" else signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # no file over 20 kB: the weights are ~90 kB
    try:
        train.fit(tiny_vit(seed=99), bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3,
                  checkpoint_dir=folder, resume=True, progress=False)
    except OSError as error:
        print(error)
"""


def test_a_full_disk_leaves_the_last_checkpoint_and_no_staging_files_and_says_how_much_room(tmp_path):
    interrupted_run(tmp_path)
    process = start_script(FILL_THE_DISK, tmp_path, "ignore")
    message = process.communicate()[0].strip()
    assert message.startswith(f"Could not write checkpoint epoch-0002 into {tmp_path} (")
    assert re.search(r"one checkpoint takes about 0\.\d MB", message) and "the previous checkpoint is intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "latest"]

    killed = start_script(FILL_THE_DISK, tmp_path, "die")  # SIGXFSZ kills it halfway through a write
    killed.communicate()
    assert killed.returncode == -signal.SIGXFSZ
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".epoch-0002."))
    assert leftovers == [f".epoch-0002.{killed.pid}.tmp"]  # staging is named for its process
    assert len(resume(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003", "latest"]


def test_checkpoint_dir_is_tried_before_the_first_epoch(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="Cannot write into checkpoint_dir .*a_file/run .*choose a folder"):
        train.fit(tiny_vit(), bright_or_dark(16), bright_or_dark(8), SETTINGS, checkpoint_dir=tmp_path / "a_file" / "run",
                  batch_transform=lambda *batch: pytest.fail("a batch was trained"), progress=False)


# ---------------------------------------------------------------- resume checks what it resumes
@pytest.mark.parametrize("change, message", [
    (dict(lr=1e-2), "lr was 0.003 and is now 0.01"),
    (dict(weight_decay=0.0), "weight_decay was 0.05 and is now 0.0"),
    (dict(batch_size=8), "batch_size was 16 and is now 8"),
    (dict(grad_accum=2), "grad_accum was 1 and is now 2"),
    (dict(max_grad_norm=None), "max_grad_norm was 1.0 and is now None"),
    (dict(seed=1), "seed was 0 and is now 1"),
    (dict(optimizer="sgd"), "optimizer was 'adamw' and is now 'sgd'"),
    (dict(schedule="linear"), "schedule was 'warmup_cosine' and is now 'linear'"),
    (dict(train_set=bright_or_dark(48)), "train_images was 64 and is now 48"),  # and only that
    (dict(train_set=bright_or_dark(64, seed=7)), r"the training data differs \(other labels or images\)"),
])
def test_resuming_with_other_settings_or_data_names_what_changed(tmp_path, change, message):
    interrupted_run(tmp_path)
    with pytest.raises(CheckpointError, match=rf"Cannot resume from {tmp_path}/epoch-0001: {message}; resume with "
                                              r"what the run was trained with, or .*overwrite=True"):
        resume(tmp_path, **change)
    assert (tmp_path / "latest").read_text() == "epoch-0001"


def test_resuming_another_model_or_class_count_names_the_difference(tmp_path):
    interrupted_run(tmp_path)
    three_classes = tiny_vit(num_labels=3)
    images = bright_or_dark(64)
    other = data.TensorImages(images.images, [i % 3 for i in range(64)], ["a", "b", "c"], images.transform)
    with pytest.raises(CheckpointError, match=r"classifier.weight', \[2, 32\].* then, .*\[3, 32\].* now\)"
                                              r".*classes was \['dark', 'bright'\] and is now \['a', 'b', 'c'\]"):
        resume(tmp_path, three_classes, other)


def test_more_epochs_on_resume_stretch_the_schedule_and_fewer_than_done_are_refused(tmp_path):
    interrupted_run(tmp_path, epochs=2)
    history = resume(tmp_path, epochs=4)
    per_epoch = train.run_steps(64, SETTINGS).per_epoch
    stretched = train.schedule_curve("warmup_cosine", SETTINGS.lr, train.RunSteps(per_epoch, 4 * per_epoch, 0))
    assert [row["lr"] for row in history.rows[1:3]] == pytest.approx([stretched[2 * per_epoch],
                                                                      stretched[3 * per_epoch]])
    assert history.rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and len(history) == 4
    with pytest.raises(CheckpointError, match="already trained 4 epochs, more than epochs=3"):
        resume(tmp_path, epochs=3)


def test_a_resumed_optimizer_starts_on_the_stretched_schedule(tmp_path):
    interrupted_run(tmp_path, epochs=2)
    per_epoch = train.run_steps(64, SETTINGS).per_epoch
    model, accelerator = tiny_vit(), Accelerator(cpu=True)
    optimizer = train.make_optimizer("adamw", train.parameter_groups(model, SETTINGS.weight_decay), SETTINGS.lr)
    scheduler = train.make_scheduler(optimizer, "warmup_cosine", 0, 4 * per_epoch)
    assert train.load_checkpoint(tmp_path, accelerator, model, optimizer, scheduler)[0] == 1
    expected = SETTINGS.lr * train.lr_factor("warmup_cosine", per_epoch, 0, 4 * per_epoch)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected, expected])


# ---------------------------------------------------------------- damaged, missing and crafted files
def flip_a_byte(path: Path):
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, file, message", [
    (flip_a_byte, "model.safetensors", r"epoch-0001/model.safetensors is damaged \(its sha256 differs"),
    (truncate, "training_state.pt", r"epoch-0001/training_state.pt is damaged"),
    (Path.unlink, "rng-0.pt", r"epoch-0001/rng-0.pt is missing"),
    (truncate, "manifest.json", r"epoch-0001/manifest.json could not be read \(JSONDecodeError"),
    (lambda path: path.write_text(""), "../latest", r"latest should name a checkpoint folder .* holds ''"),
    (lambda path: path.write_text("/etc"), "../latest", r"latest should name a checkpoint folder .* holds '/etc'"),
    (lambda path: path.write_text("../epoch-0001"), "../latest", r"holds '../epoch-0001'"),
    (Path.unlink, "../latest", r"latest is missing, so it is not known which of epoch-0001 is complete"),
])
def test_a_damaged_checkpoint_is_one_sentence_naming_the_file_and_is_never_deleted(tmp_path, damage, file, message):
    folder = interrupted_run(tmp_path / "run") / "epoch-0001"
    damage(folder / file)
    with pytest.raises(CheckpointError, match=message) as error:
        resume(tmp_path / "run")
    assert str(error.value).count(". ") == 0 and "overwrite=True" in str(error.value)
    with pytest.raises(CheckpointError, match="holds the checkpoints of an earlier run"):
        interrupted_run(tmp_path / "run")  # resume=False does not delete what is left
    assert folder.is_dir()


def test_latest_may_not_lead_out_of_the_folder_through_a_link(tmp_path):
    elsewhere = interrupted_run(tmp_path / "elsewhere") / "epoch-0001"
    interrupted_run(tmp_path / "run")
    (tmp_path / "run" / "epoch-0002").symlink_to(elsewhere)
    (tmp_path / "run" / "latest").write_text("epoch-0002")
    with pytest.raises(CheckpointError, match="holds 'epoch-0002'"):
        resume(tmp_path / "run")


class WritesAMarker:
    """Unpickled with weights_only=False, this object writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (Path(self.marker), "code from the checkpoint ran")


@pytest.mark.parametrize("file", ["rng-0.pt", "training_state.pt"])
def test_a_crafted_pickle_with_a_matching_checksum_runs_no_code(tmp_path, file):
    folder, marker = interrupted_run(tmp_path / "run") / "epoch-0001", tmp_path / "marker"
    torch.save(WritesAMarker(str(marker)), folder / file)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][file] = data.file_hash(folder / file)  # an attacker can rewrite the manifest too
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"epoch-0001/{file} could not be read \(UnpicklingError: it holds "
                                              r"Python objects, not only tensors and numbers, and is not unpickled\)"):
        resume(tmp_path / "run")
    assert not marker.exists()
    torch.load(folder / file, weights_only=False)  # the crafted file is real: loaded the unsafe way, it runs
    assert marker.read_text() == "code from the checkpoint ran"


# ---------------------------------------------------------------- training guards
class NaNFromEpoch:
    """A batch transform that leaves batches alone until `epoch` (counting calls), then makes them NaN."""

    def __init__(self, epoch, batches_per_epoch):
        self.calls, self.first_bad_call = 0, 1 + (epoch - 1) * batches_per_epoch  # the first call is fit's probe

    def __call__(self, images, labels):
        self.calls += 1
        return (images * float("nan") if self.calls > self.first_bad_call else images), labels


def test_a_loss_that_turns_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_vit()
    with pytest.raises(FloatingPointError, match=rf"The training loss is nan in epoch 2, so training stopped before "
                                                 rf"that step and the last good checkpoint, {tmp_path}/epoch-0001, is "
                                                 r"kept: train again with a lower lr \(now 0.003\)"):
        train.fit(model, bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3, checkpoint_dir=tmp_path,
                  batch_transform=NaNFromEpoch(2, batches_per_epoch=4), progress=False)
    assert all(torch.isfinite(w).all() for w in weights(model).values())
    assert (tmp_path / "latest").read_text() == "epoch-0001"
    assert len(resume(tmp_path)) == 3  # the kept checkpoint is whole


NAN_IN_ONE_PROCESS = """
    import sys
    from helpers import train
    from tiny_training import SETTINGS, bright_or_dark, tiny_vit

    accelerator = train.make_accelerator(SETTINGS)
    calls = 0


    def nan_in_process_one_from_epoch_two(images, labels):  # 2 batches per process and epoch, after fit's probe
        global calls
        calls += 1
        return (images * float("nan") if accelerator.process_index == 1 and calls > 3 else images), labels


    try:
        train.fit(tiny_vit(), bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, epochs=3, progress=False,
                  checkpoint_dir=sys.argv[1], batch_transform=nan_in_process_one_from_epoch_two,
                  accelerator=accelerator)
    except FloatingPointError as error:
        print(f"process {accelerator.process_index}: {error}")
"""


def test_under_torchrun_a_nan_in_one_process_stops_every_process_and_the_checkpoint_holds_each(tmp_path):
    script, folder = tmp_path / "nan_in_one_process.py", tmp_path / "run"
    script.write_text(textwrap.dedent(NAN_IN_ONE_PROCESS))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                   "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    finished = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), str(folder)], env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    kept = f"the last good checkpoint, {folder}/epoch-0001, is kept"
    assert f"process 1: The training loss is nan in epoch 2, so training stopped before that step and {kept}" \
        in finished.stdout
    assert "process 0: The training loss is not finite in another process in epoch 2" in finished.stdout
    assert sorted(p.name for p in (folder / "epoch-0001").iterdir()) == [
        "manifest.json", "model.safetensors", "rng-0.pt", "rng-1.pt", "training_state.pt"]


def test_a_diverging_learning_rate_stops_at_the_first_non_finite_loss():
    with pytest.raises(FloatingPointError, match=r"The training loss is (nan|inf) in epoch 1, so training stopped "
                                                 r"before that step and nothing was saved \(no checkpoint_dir\): "
                                                 r"train again with a lower lr \(now 1e\+30\) .*now None\)\.$"):
        train.fit(tiny_vit(), bright_or_dark(64), bright_or_dark(16, seed=1), SETTINGS, lr=1e30, max_grad_norm=None,
                  progress=False)


def test_inputs_that_would_train_silently_wrong_are_refused_before_the_first_step():
    untransformed = data.TensorImages(bright_or_dark(32).images, bright_or_dark(32).labels, ["dark", "bright"])
    no_step = dict(batch_transform=None, progress=False)
    with pytest.raises(ValueError, match=r"reach the model as torch.uint8 pixels: .*eval_transform"):
        train.fit(tiny_vit(), untransformed, bright_or_dark(8), SETTINGS, **no_step)
    images = bright_or_dark(32)
    three = data.TensorImages(images.images, [i % 3 for i in range(32)], ["a", "b", "c"], images.transform)
    with pytest.raises(ValueError, match="head has 2 outputs but the data has 3 classes"):
        train.fit(tiny_vit(), three, bright_or_dark(8), SETTINGS, **no_step)
    with pytest.raises(ValueError, match="grad_accum=3 is longer than an epoch, which has only 2 batch"):
        train.fit(tiny_vit(), bright_or_dark(32), bright_or_dark(8), SETTINGS, grad_accum=3, **no_step)


@pytest.mark.parametrize("override, message", [
    (dict(epochs="2"), "epochs must be a whole number, got '2'"),
    (dict(epochs=2.0), "epochs must be a whole number, got 2.0"),
    (dict(lr=float("nan")), "lr must be a finite number, got nan"),
    (dict(seed=-1), r"seed must be in \[0, 4294967295\]"),
    (dict(epoch=2), "Unknown setting\\(s\\) 'epoch'"),
])
def test_fit_overrides_are_checked_like_resolve(override, message):
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_vit(), bright_or_dark(8), bright_or_dark(8), SETTINGS, progress=False, **override)


# ---------------------------------------------------------------- workers and random augmentation
def test_resume_is_exact_with_workers_and_random_augmentation(tmp_path):
    augmented = bright_or_dark(64)
    augmented.transform = v2.Compose([v2.RandomResizedCrop(16, scale=(0.5, 1.0), antialias=True),
                                      v2.RandomHorizontalFlip(), data.to_model_input(SPEC)])
    run = dict(epochs=3, num_workers=2, progress=False)
    uninterrupted = tiny_vit()
    full = train.fit(uninterrupted, augmented, bright_or_dark(16, seed=1), SETTINGS, **run)
    train.fit(tiny_vit(), augmented, bright_or_dark(16, seed=1), SETTINGS, checkpoint_dir=tmp_path, stop_after=1,
              **run)
    restarted = tiny_vit(seed=99)
    resumed = train.fit(restarted, augmented, bright_or_dark(16, seed=1), SETTINGS, checkpoint_dir=tmp_path,
                        resume=True, **run)
    assert history_rows(resumed) == history_rows(full)
    assert same_weights(weights(restarted), weights(uninterrupted))
