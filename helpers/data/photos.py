"""Photos as phones and cameras write them (lesson 07): EXIF orientation, 16-bit and float pixels, transparency,
HEIC, a resized cache decoded once, and near-duplicates found by a perceptual hash.

`read_photo(path)` is what every dataset of files reads through (`helpers.data.read_rgb` calls it).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy.fft import dctn

from helpers.progress import progress_bar

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto: white, like a page or a web view


HEIC_SUFFIXES = (".heic", ".heif")


HEIC_ISSUE = "HEIC photo (the iPhone default) and its optional plugin pillow-heif is not installed"


HEIC_FIX = "pip install pillow-heif (or the kit's extra: pip install -e '.[photos]') and read it again"


ORIENTATION_TAG = 0x0112  # EXIF "Orientation": 1 upright, 6 = stored turned 90 degrees (portrait on most phones)


class UnreadablePhoto(OSError):
    """A file that cannot be decoded here, with the sentence saying what to do (lesson 07)."""


@functools.cache
def heif_available() -> bool:
    """True when the optional `pillow-heif` plugin is installed; registers it with PIL once (lesson 07)."""
    if importlib.util.find_spec("pillow_heif") is None:
        return False
    import pillow_heif

    pillow_heif.register_heif_opener()
    return True


def open_photo(path: str | os.PathLike) -> Image.Image:
    """The decoded image of `path` turned upright by its EXIF orientation (lesson 07).

    HEIC/HEIF files need the optional `pillow-heif` plugin; without it `UnreadablePhoto` says how to get it.
    """
    path = Path(path)
    heif = heif_available()  # registers the plugin, so HEIC decodes under any name when it is installed
    if path.suffix.lower() in HEIC_SUFFIXES and not heif:
        raise UnreadablePhoto(f"{path.name}: {HEIC_ISSUE}: {HEIC_FIX}.")
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def to_rgb8(image: Image.Image, background=BACKGROUND) -> torch.Tensor:
    """A PIL image of any mode as uint8 RGB [3, H, W]: high bit depths scaled, transparency composited (lesson 07).

    16-bit modes (I;16, and I holding values above 255) are scaled from 0..65535; float images (F) from 0..1,
    or from their own min..max when they leave that range; transparent pixels are laid on `background`.
    `convert("RGB")` alone clips 16-bit values (a 16-bit scan comes out nearly white) and drops alpha
    onto black.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64)
        if image.mode == "F":
            low, high = (0.0, 1.0) if values.min() >= 0 and values.max() <= 1 else (values.min(), values.max())
        else:
            low, high = 0.0, (65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0)
        scaled = (values - low) / max(high - low, 1e-12) * 255
        gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return torch.from_numpy(gray).expand(3, -1, -1).contiguous()
    if has_transparency(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(canvas, rgba)
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def has_transparency(image: Image.Image) -> bool:
    """True when some pixel is not fully opaque (an alpha channel, or a palette with a transparent colour) (lesson 07)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.getextrema()[0] < 255
    return False


def read_photo(path: str | os.PathLike, background=BACKGROUND) -> torch.Tensor:
    """Decode a photo to uint8 RGB [3, H, W] the way it is meant to be seen: upright, scaled, composited (lesson 07)."""
    return to_rgb8(open_photo(path), background)


def photo_notes(image: Image.Image) -> list[tuple[str, str]]:
    """(issue, action) for what `read_photo` changes in this opened (not yet transposed) image (lesson 07).

    A plain RGB photo has none; lesson 03's colour modes (L, P, CMYK, opaque RGBA) say "converted to RGB".
    """
    notes = []
    orientation = image.getexif().get(ORIENTATION_TAG, 1)
    if orientation not in (1, None):
        notes.append((f"EXIF orientation {orientation}", "turned upright"))
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        notes.append((f"high bit depth (mode {image.mode})", "scaled to 8 bits, not clipped"))
    elif has_transparency(image):
        notes.append((f"transparent pixels (mode {image.mode})", f"composited onto {_colour_name(BACKGROUND)}"))
    elif image.mode != "RGB":
        notes.append((f"mode {image.mode}", "converted to RGB"))
    return notes


def _colour_name(rgb) -> str:
    return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(tuple(rgb), f"RGB{tuple(rgb)}")


def cache_name(path: Path, short_side: int) -> str:
    """The cache file of `path` resized to `short_side`: its content hash and the size, so an edit makes a new one (lesson 07)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]
    return f"{digest}_{short_side}.png"


def resize_short_side(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """uint8 [3, H, W] resized (antialiased) so its shorter side is `short_side`; never enlarged (lesson 07)."""
    height, width = image.shape[-2:]
    scale = short_side / min(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)


def prepare(paths, short_side: int, cache_dir: str | os.PathLike, progress: bool = True) -> list[Path]:
    """Decode each photo once (upright, 8-bit RGB) into a small PNG whose short side is `short_side` (lesson 07).

    Returns the cached file of each path, in order. A file already in `cache_dir` (same content, same
    size) is reused, so a second run decodes nothing; epochs then read small files instead of 12-megapixel
    JPEGs. A cache file is written under a temporary name and renamed, so an interrupted run leaves no
    half-written file. Pick `short_side` a few times the model's input (2x leaves room for crops).
    """
    if short_side < 1:
        raise ValueError(f"short_side must be a positive number of pixels; got {short_side}.")
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = []
    for path in progress_bar(list(paths), desc="prepare", disable=not progress):
        target = cache_dir / cache_name(path, short_side)
        if not target.exists():
            partial = target.with_name(f".{target.stem}.{os.getpid()}.png")
            small = resize_short_side(read_photo(path), short_side)
            Image.fromarray(small.permute(1, 2, 0).numpy()).save(partial)
            partial.replace(target)
        cached.append(target)
    return cached


def perceptual_hash(image: torch.Tensor) -> int:
    """64-bit pHash of uint8 [3, H, W]: signs of the 8x8 lowest frequencies of a 32x32 grey DCT vs their median (lesson 07).

    Resizing, recompressing, small crops and edits move few bits; different scenes differ in about half.
    """
    gray = Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    low = dctn(np.asarray(gray, dtype=np.float64), norm="ortho")[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass
class NearDuplicate:
    """Two items whose perceptual hashes differ in `distance` of 64 bits (lesson 07)."""

    first: int
    second: int
    distance: int


def near_duplicates(hashes, max_distance: int = 10, chunk: int = 2048) -> list[NearDuplicate]:
    """Every pair of items whose pHashes differ in at most `max_distance` bits, closest first (lesson 07).

    Compares all pairs in chunks (50,000 photos: about a gigabyte of bit counts in all, a few hundred
    megabytes at a time), so it needs no index.
    """
    values = np.asarray([int(h) for h in hashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), chunk):
        block = values[start:start + chunk]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, columns = np.nonzero(distances <= max_distance)
        keep = columns > rows + start
        pairs += [NearDuplicate(int(r + start), int(c), int(distances[r, c]))
                  for r, c in zip(rows[keep], columns[keep])]
    return sorted(pairs, key=lambda pair: (pair.distance, pair.first, pair.second))


def dataset_hashes(dataset, progress: bool = True) -> list[int]:
    """The perceptual hash of every image of a `helpers.data` dataset, in order (lesson 07)."""
    return [perceptual_hash(dataset.image(i)) for i in progress_bar(range(len(dataset)), desc="hashes", disable=not progress)]
