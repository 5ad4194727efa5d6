"""`python -m helpers.course finetune`: lesson 07's recipe as a script, its bad inputs, and two processes."""
import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import course, profiles
from helpers.course import finetune


def photo_folder(root, classes=("brick", "grass", "sand"), groups=6, per_group=4, seed=0):
    """Per class, `groups` scenes of `per_group` photos each: noise textures with a class-specific colour."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for group in range(groups):
            scene = rng.integers(0, 256, (48, 48, 3)).astype(np.int16)
            scene[..., label] = 255
            for k in range(per_group):
                shot = np.clip(scene + rng.integers(-40, 41, scene.shape), 0, 255).astype(np.uint8)
                Image.fromarray(shot).save(root / name / f"s{group}_{k}.png")
    return root


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(zlib.crc32(str(path).encode())).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)


def bad_folders(tmp_path):
    """name -> (folder, what the one sentence must say)."""
    cases = {"missing": (tmp_path / "nowhere", "No folder at"), "empty": (tmp_path / "empty", "is empty")}
    (tmp_path / "empty").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "text" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "text" / "a" / f"{i}.txt").write_text("not a photo")
        write_image(tmp_path / "one" / "cat" / f"{i}.png")
        write_image(tmp_path / "nested" / "animals" / ("cat" if i % 2 else "dog") / f"{i}.png")
        write_image(tmp_path / "single" / "cat" / f"{i}.png")
    write_image(tmp_path / "single" / "dog" / "0.png")
    cases["non-images"] = (tmp_path / "text", "leaving out a \\(no readable image among its 4 files\\)")
    cases["one class"] = (tmp_path / "one", "at least two")
    cases["one photo in a class"] = (tmp_path / "single", "leaving out dog \\(only 1 image.*3 or more photos")
    cases["classes in sub-folders"] = (tmp_path / "nested", "one level deeper")
    return cases


def test_bad_folders_get_one_sentence_and_nothing_is_written(tmp_path, capsys):
    for name, (folder, message) in bad_folders(tmp_path / "in").items():
        out = tmp_path / "out" / name.replace(" ", "-")
        code = course.main(["finetune", "--data", f"imagefolder:{folder}", "--model", "tiny-vit", "--profile",
                            "smoke", "--out", str(out)])
        error = capsys.readouterr().err.split("\r")[-1]  # after the scan's progress bar, cleared
        assert code == 2, name
        assert error.startswith("error: ") and error.count("\n") == 1, error
        assert re.search(message, error), (name, error)
    assert not (tmp_path / "out").exists()  # no model, no cache, not even the folder


def test_data_must_be_an_image_folder(capsys):
    assert course.main(["finetune", "--data", "cifar10", "--model", "tiny-vit"]) == 2
    assert "imagefolder:PATH" in capsys.readouterr().err


def test_recipe_writes_a_model_with_its_card_and_keeps_groups_whole(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    settings = profiles.resolve("smoke", epochs=2, batch_size=8, lr=3e-3)
    metrics = finetune.run_recipe(folder, settings, tmp_path / "out", strategy="lora", group_pattern=r"^(s\d+)_",
                                  progress=False)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert metrics["test_accuracy"] > 1 / 3 and metrics["processes"] == 1
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert f"{metrics['test_accuracy']:.1%}" in card and "strategy **lora**" in card
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    photos = finetune.load_photos(folder, 64, tmp_path / "out" / ".." / ".out-cache", group_pattern=r"^(s\d+)_",
                                  progress=False)
    assert len(set(photos.groups)) == 18  # one group per scene


def run_finetune(out, processes, batch_size, folder):
    arguments = ["--data", f"imagefolder:{folder}", "--model", "tiny-vit", "--profile", "smoke", "--strategy", "full",
                 "--no-flips", "--group-pattern", r"^(s\d+)_", "-p", "epochs", "2", "-p", "batch_size",
                 str(batch_size), "-p", "lr", "2e-3", "--out", str(out)]
    if processes == 1:
        command = [sys.executable, "-m", "helpers.course", "finetune", *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "helpers.course", "finetune", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=400, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), load_file(out / "model" / "model.safetensors")


def test_two_processes_equal_one_with_the_same_effective_batch(tmp_path):
    folder = photo_folder(tmp_path / "photos")  # 3 classes x 4 training scenes x 4 photos = 48: 6 batches of 8
    one, one_weights = run_finetune(tmp_path / "one", 1, 8, folder)
    two, two_weights = run_finetune(tmp_path / "two", 2, 4, folder)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one_weights.keys() == two_weights.keys()
    for name, tensor in one_weights.items():
        # A key bias shifts every score of a query equally, which softmax ignores: its true gradient is 0, and
        # Adam scales the rounding noise left in its place up to steps of about lr, so it agrees more loosely.
        atol = 1e-3 if "key.bias" in name else 5e-5
        torch.testing.assert_close(two_weights[name], tensor, atol=atol, rtol=1e-4, msg=name)
    assert one["val_accuracy"] == two["val_accuracy"] and one["test_accuracy"] == two["test_accuracy"]
    assert not (tmp_path / "two" / "model.partial").exists()


def test_a_bad_folder_stops_every_process_with_its_sentence(tmp_path):
    folder = bad_folders(tmp_path / "in")["one class"][0]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "helpers.course", "finetune", "--data", f"imagefolder:{folder}", "--model", "tiny-vit", "--profile",
               "smoke", "--out", str(tmp_path / "out")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode != 0
    assert finished.stderr.count("error: ") == 2 and "at least two" in finished.stderr  # one sentence per process
    assert not (tmp_path / "out").exists()
