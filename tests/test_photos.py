"""Photo I/O (helpers.data.photos) on files the tests write the way phones and tools write them."""
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import data
from helpers.data import photos


def gradient_photo(height=40, width=64) -> np.ndarray:
    """An asymmetric RGB picture: red grows to the right, green downwards, a white block top-left."""
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 60)], -1).astype(np.uint8)
    picture[:8, :8] = 255
    return picture


def naive(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_exif_orientation_6_is_read_upright(tmp_path):
    upright = gradient_photo()
    exif = Image.Exif()
    exif[photos.ORIENTATION_TAG] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=98)
    assert naive(path).shape[:2] == (64, 40)  # sideways without the fix
    read = data.read_rgb(path).permute(1, 2, 0).numpy().astype(int)
    assert read.shape[:2] == upright.shape[:2]
    assert np.abs(read - upright).mean() < 3
    with Image.open(path) as image:
        assert ("EXIF orientation 6", "turned upright") in photos.photo_notes(image)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257
    path = tmp_path / "scan16.png"
    Image.fromarray(grey).save(path)
    assert (naive(path) == 255).mean() > 0.99  # convert("RGB") saturates
    read = data.read_photo(path)
    assert torch.equal(read[0], torch.arange(256, dtype=torch.uint8).reshape(16, 16))
    assert torch.equal(read[0], read[2])


def test_float_images_are_scaled_from_0_1_or_their_own_range(tmp_path):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    unit = photos.to_rgb8(Image.fromarray(values, mode="F"))
    assert unit[0, 0, 0] == 0 and unit[0, -1, -1] == 255 and abs(int(unit[0, 4, 0]) - 130) <= 1
    wide = photos.to_rgb8(Image.fromarray(values * 1000 - 500, mode="F"))
    assert torch.equal(wide, unit)


def test_transparency_is_composited_onto_the_stated_background(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    assert (naive(path)[5:] == [200, 0, 0]).all()  # the hidden pixels show through: black would show for zeros
    read = data.read_photo(path)
    assert (read[:, 5:] == 255).all() and (read[:, :5] == torch.tensor([200, 0, 0])[:, None, None]).all()
    assert (data.read_photo(path, background=(0, 0, 0))[:, 5:] == 0).all()
    with Image.open(path) as image:
        assert photos.photo_notes(image) == [("transparent pixels (mode RGBA)", "composited onto white")]
    opaque = tmp_path / "opaque.png"
    Image.fromarray(gradient_photo()).convert("RGBA").save(opaque)
    assert torch.equal(data.read_photo(opaque), torch.from_numpy(gradient_photo()).permute(2, 0, 1))
    with Image.open(opaque) as image:
        assert photos.photo_notes(image) == [("mode RGBA", "converted to RGB")]  # as lesson 03 reports it


def test_heic_is_read_with_the_plugin(tmp_path):
    pytest.importorskip("pillow_heif", reason="the optional plugin pillow-heif is not installed")
    path = tmp_path / "iphone.heic"
    photos.heif_available()
    Image.fromarray(gradient_photo()).save(path, quality=95)
    read = data.read_photo(path).permute(1, 2, 0).numpy().astype(int)
    assert read.shape == (40, 64, 3) and np.abs(read - gradient_photo()).mean() < 8


def test_heic_without_the_plugin_is_listed_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "heif_available", lambda: False)
    monkeypatch.setattr(data.folders, "heif_available", lambda: False)
    for k, name in enumerate(("cat", "dog")):
        for i in range(3):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(np.roll(gradient_photo(), 3 * i + k, axis=1)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(photos.UnreadablePhoto, match="pip install pillow-heif"):
        data.read_photo(tmp_path / "cat" / "IMG_0001.HEIC")
    scan = data.scan_folder(tmp_path)
    [problem] = scan.problems
    assert problem.path.name == "IMG_0001.HEIC" and "HEIC" in problem.issue
    assert problem.action.startswith("skipped") and "pip install pillow-heif" in problem.action
    assert len(scan.paths) == 6


def test_scan_names_what_the_photo_io_changes(tmp_path):
    for k, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        for shift in range(3):  # three distinct photos, so the class is kept
            Image.fromarray(np.roll(gradient_photo(), 3 * k + shift, axis=0)).save(tmp_path / name / f"{shift}.png")
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    issues = {p.path.name: (p.issue, p.action) for p in data.scan_folder(tmp_path).problems}
    assert issues == {"deep.png": ("high bit depth (mode I;16)", "scaled to 8 bits, not clipped")}


def test_prepare_decodes_once_into_small_files_keyed_by_content(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(gradient_photo(), (10, 10, 1))).save(big)  # 400 x 640
    [cached] = photos.prepare([big], 64, tmp_path / "cache", progress=False)
    with Image.open(cached) as image:
        assert min(image.size) == 64 and image.size == (102, 64)
    assert photos.prepare([big], 64, tmp_path / "cache", progress=False) == [cached]  # reused
    stamp = cached.stat().st_mtime_ns
    photos.prepare([big], 64, tmp_path / "cache", progress=False)
    assert cached.stat().st_mtime_ns == stamp  # not decoded again
    [other_size] = photos.prepare([big], 32, tmp_path / "cache", progress=False)
    Image.fromarray(gradient_photo()[::-1].copy()).save(big)  # the photo is edited
    [edited] = photos.prepare([big], 64, tmp_path / "cache", progress=False)
    assert len({cached, other_size, edited}) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(p.name for p in (cached, other_size,
                                                                                               edited))
    small = photos.prepare([edited], 64, tmp_path / "again", progress=False)[0]
    assert torch.equal(data.read_photo(small), data.read_photo(edited))  # never enlarged


def test_file_images_prepared_keeps_labels_and_reads_upright(tmp_path):
    exif = Image.Exif()
    exif[photos.ORIENTATION_TAG] = 6
    path = tmp_path / "p.jpg"
    Image.fromarray(np.tile(gradient_photo(), (4, 4, 1))).transpose(Image.Transpose.ROTATE_90).save(
        path, exif=exif.tobytes())
    dataset = data.FileImages([path], [1], ["a", "b"]).prepared(40, tmp_path / "cache", progress=False)
    assert dataset.labels == [1] and dataset.classes == ["a", "b"]
    assert tuple(dataset.image(0).shape) == (3, 40, 64)  # upright: wider than high


def test_perceptual_hash_finds_resized_copies_and_not_other_photos(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [np.clip(rng.normal(128, 60, (96, 96, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    scenes = [np.asarray(Image.fromarray(s).resize((12, 12)).resize((96, 96), Image.Resampling.BICUBIC))
              for s in scenes]  # smooth, like photos
    copy = np.asarray(Image.fromarray(scenes[2]).resize((48, 48)))
    images = [torch.from_numpy(s.copy()).permute(2, 0, 1) for s in [*scenes, copy]]
    hashes = [photos.perceptual_hash(image) for image in images]
    pairs = photos.near_duplicates(hashes, max_distance=8)
    assert [(p.first, p.second) for p in pairs] == [(2, 4)]
    assert photos.near_duplicates(hashes, 8, chunk=2) == pairs  # chunking changes nothing
    assert min(bin(hashes[i] ^ hashes[j]).count("1") for i in range(4) for j in range(i + 1, 4)) > 16


def test_scanning_many_files_keeps_memory_small(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(600):
            Image.fromarray(np.full((8, 8, 3), i % 256, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    tracemalloc.start()
    scan = data.scan_folder(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(scan.paths) + len(scan.problems) >= 1200 - 256 * 2  # many exact duplicates, all accounted for
    assert peak / 1200 < 4000, f"{peak / 1200:.0f} bytes per file"  # 50,000 files: under 200 MB
