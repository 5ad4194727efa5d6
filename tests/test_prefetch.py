"""Caches, stand-ins and prefetch: stand-ins with the real shapes load offline and say so; a real download
resumes after an interruption, never leaves a half file under its final name, and replaces a stand-in."""
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
from huggingface_hub import constants

from helpers import caches, course, data, hardware, models, profiles
from helpers.course import cli, prefetch
from helpers.data import cifar
from helpers.train.cache import finetune_key

TINY_CONFIG = {**prefetch.GPU_MODEL_CONFIG, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TINY_PROCESSOR = {**prefetch.GPU_MODEL_PROCESSOR, "size": 32}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, used by transformers and the kit alike."""
    folder = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    return folder


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setattr(caches, "DATA_ROOT", root)
    return root


def tiny_cifar_stand_in(root):
    return prefetch.write_cifar_stand_in("cifar10", root, train_per_class=10, test_per_class=2)


def test_model_stand_in_loads_offline_with_the_real_config_and_says_so(hub):
    snapshot = prefetch.write_model_stand_in(config=TINY_CONFIG, processor=TINY_PROCESSOR)
    assert caches.model_status(profiles.GPU_MODEL) == "stand-in" and caches.marker_matches(snapshot)
    model, processor, report = models.load_model_with_report(profiles.GPU_MODEL, prefetch.CIFAR10_CLASSES)
    assert report.stand_in and "STAND-IN" in str(report)
    assert report.new == ["classifier.bias", "classifier.weight"]  # as with the real checkpoint: a new head
    assert model.config.hidden_size == 32 and data.ImageSpec.from_processor(processor).size == (32, 32)
    assert caches.stand_ins_in_use(profiles.GPU_MODEL, "digits") == [
        f"the model {profiles.GPU_MODEL} is a stand-in: random weights with the real shapes"]


def test_the_stand_in_config_is_vit_b16_as_the_memory_model_knows_it():
    from transformers import ViTConfig

    fields = {k: v for k, v in prefetch.GPU_MODEL_CONFIG.items() if not k.startswith("_") and k != "architectures"}
    assert hardware.model_shape(ViTConfig(**fields), 10) == hardware.VIT_B16 == profiles.model_shape_for(
        profiles.resolve("gpu"))


def test_a_real_model_wins_over_a_stand_in_and_the_banner_goes(hub):
    prefetch.write_model_stand_in(config=TINY_CONFIG, processor=TINY_PROCESSOR)
    repo = caches.hub_repo_folder(profiles.GPU_MODEL)
    real = repo / "snapshots" / ("a" * 40)  # what a download writes: a snapshot, then refs/main
    real.mkdir(parents=True)
    stand_in = repo / "snapshots" / prefetch.STAND_IN_REVISION
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (real / name).write_bytes((stand_in / name).read_bytes())
    (repo / "refs" / "main").write_text("a" * 40)
    assert caches.model_status(profiles.GPU_MODEL) == "real"
    assert caches.stand_ins_in_use(profiles.GPU_MODEL, "digits") == []
    assert not models.load_model_with_report(profiles.GPU_MODEL, ["a", "b"])[2].stand_in
    assert prefetch.write_model_stand_in(config=TINY_CONFIG) == real  # a real model is never overwritten


def test_an_interrupted_stand_in_write_leaves_no_model(hub, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(caches, "write_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prefetch.write_model_stand_in(config=TINY_CONFIG, processor=TINY_PROCESSOR)
    assert caches.model_status(profiles.GPU_MODEL) == "missing" and not profiles.gpu_assets_cached()


def test_cifar_stand_in_loads_as_cifar_and_is_flagged(data_root):
    folder = tiny_cifar_stand_in(data_root)
    assert caches.cifar_status("cifar10") == "stand-in"
    assert sorted(p.name for p in folder.iterdir()) == sorted(caches.cifar_files("cifar10") + ["STAND_IN.json"])
    splits = data.load_dataset("cifar10", root=data_root, download=False)
    assert splits.stand_in and "stand-in" in splits.source and splits.classes == prefetch.CIFAR10_CLASSES
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 20
    assert splits.train.images.dtype.is_floating_point is False and tuple(splits.train.images.shape[1:]) == (3, 32, 32)
    assert np.bincount(splits.test.labels).tolist() == [2] * 10
    banner = caches.stand_in_banner(caches.stand_ins_in_use("tiny-vit", "cifar10"))
    assert "cifar10 is a stand-in" in banner and caches.MEANINGLESS in banner


def test_stand_in_images_are_learnable_not_noise():
    labels = np.repeat(np.arange(10), 20)
    images = prefetch.stand_in_images(labels, 10, np.random.default_rng(0)).astype(float)
    means = np.stack([images[labels == k].mean(0) for k in range(10)])
    within = np.mean([np.abs(images[labels == k] - means[k]).mean() for k in range(10)])
    between = np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4)).sum() / 90
    assert between > within / 2  # classes differ by more than noise hides


def test_a_changed_stand_in_file_is_refused_with_one_sentence(data_root):
    folder = tiny_cifar_stand_in(data_root)
    with open(folder / "data_batch_1", "r+b") as file:
        file.seek(200)
        file.write(b"\x00\x01")
    with pytest.raises(ValueError, match="does not match its own checksums"):
        data.load_dataset("cifar10", root=data_root, download=False)


def test_stand_in_reader_runs_no_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        cifar.read_numpy_pickle(evil)
    assert not (tmp_path / "pwned").exists()
    fine = tmp_path / "fine"
    fine.write_bytes(pickle.dumps({b"data": np.arange(6, dtype=np.uint8), b"labels": [1, 2]}, protocol=2))
    assert cifar.read_numpy_pickle(fine)["labels"] == [1, 2]


def cifar_archive() -> bytes:
    """An archive laid out like CIFAR-10's (not its published bytes)."""
    rng = np.random.default_rng(1)
    files = {name: pickle.dumps({b"labels": [0, 1] * 5, b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8)},
                                protocol=2) for name in caches.cifar_files("cifar10")[:-1]}
    files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in prefetch.CIFAR10_CLASSES]})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in {**files, "readme.html": b"<p>"}.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def server():
    """A local HTTP server for one archive that honours Range requests and can drop a download half-way."""
    class Handler(http.server.BaseHTTPRequestHandler):
        payload, cut_after, ranges = cifar_archive(), None, []

        def do_GET(self):
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers["Range"] else 0
            Handler.ranges.append(self.headers["Range"])
            body = Handler.payload[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut, Handler.cut_after = Handler.cut_after, None
            self.wfile.write(body[:cut] if cut else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Handler, f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz"
    httpd.shutdown()
    httpd.server_close()


def test_an_interrupted_download_resumes_and_the_real_data_replaces_the_stand_in(data_root, server):
    handler, url = server
    md5 = hashlib.md5(handler.payload).hexdigest()
    tiny_cifar_stand_in(data_root)
    handler.cut_after = len(handler.payload) // 3
    with pytest.raises(ConnectionError, match="resumes"):
        cifar.fetch_cifar("cifar10", data_root, url=url, md5=md5)
    part = data_root / "cifar-10-python.tar.gz.part"
    have = part.stat().st_size
    assert 0 < have < len(handler.payload) and not (data_root / "cifar-10-python.tar.gz").exists()
    assert caches.cifar_status("cifar10") == "stand-in"  # the half download is not taken for data
    folder = cifar.fetch_cifar("cifar10", data_root, url=url, md5=md5)
    assert handler.ranges == [None, f"bytes={have}-"]  # the second request asked only for the rest
    assert caches.cifar_status("cifar10") == "present" and not (folder / caches.STAND_IN_MARKER).exists()
    assert caches.stand_ins_in_use("tiny-vit", "cifar10") == []
    with pytest.raises(ValueError, match="do not match cifar10's published checksums"):
        data.load_dataset("cifar10", root=data_root, download=False)  # torchvision checks the published md5s


def test_a_corrupt_download_is_dropped_with_one_sentence(data_root, server):
    _, url = server
    with pytest.raises(ValueError, match="does not match its published md5"):
        cifar.fetch_cifar("cifar10", data_root, url=url, md5="0" * 32)
    assert not list(data_root.glob("*.tar.gz*")) and caches.cifar_status("cifar10") == "missing"


def test_offline_without_a_cache_says_how_to_get_cifar(data_root):
    with pytest.raises(FileNotFoundError, match="prefetch"):
        data.load_dataset("cifar10", root=data_root, download=False)


def test_prefetch_offline_says_why_in_one_sentence(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["prefetch"]) == 1
    printed = capsys.readouterr().out.strip()
    assert printed == prefetch.OFFLINE and printed.count(". ") == 0


def test_start_prints_the_banner_and_records_stand_ins(hub, data_root, capsys):
    prefetch.write_model_stand_in(config=TINY_CONFIG, processor=TINY_PROCESSOR)
    tiny_cifar_stand_in(data_root)
    settings = course.start("gpu", {"epochs": 1, "train_size": 20})
    printed = capsys.readouterr().out
    assert printed.index("STAND-INS:") < printed.index("profile       gpu")
    assert "plan          for " in printed and course.RECORDED["stand_in"] is True
    assert settings.epochs == 1 and settings.train_size == 20


def test_a_fine_tune_of_stand_ins_is_not_reused_for_real_assets(hub, data_root):
    settings = profiles.resolve("gpu")
    real_key = finetune_key(settings)
    tiny_cifar_stand_in(data_root)
    assert finetune_key(settings) != real_key


def test_gpu_assets_cached_needs_model_and_data(hub, data_root):
    assert not profiles.gpu_assets_cached()
    prefetch.write_model_stand_in(config=TINY_CONFIG, processor=TINY_PROCESSOR)
    assert not profiles.gpu_assets_cached()
    tiny_cifar_stand_in(data_root)
    assert profiles.gpu_assets_cached()


def test_prefetch_is_a_course_command():
    assert "prefetch" in [command.name for command in cli.COMMANDS]
