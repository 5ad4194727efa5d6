"""Formula-driven pretraining of the kit's tiny ViT on fractals (FractalDB, Kataoka et al. 2020).

No photographs are needed: each *category* is an iterated function system (IFS), a few
random contractive affine maps ``(x, y) -> (a x + b y + e, c x + d y + f)``. Playing the
"chaos game" (start anywhere, apply a map chosen with probability proportional to its
|det|, repeat) draws the system's attractor, a fractal. Categories whose drawing fills
too little or too much of the canvas are dropped. *Instances* of a category perturb its
parameters a little and may be flipped, so the network must learn the shape, not the
pixels. Classifying these shapes teaches a ViT edges, strokes, curvature and layout,
features that transfer to real images (Nakashima et al., AAAI 2022).

`python -m helpers.pretrain` rebuilds the kit's bundled checkpoint (`helpers/assets/tiny-vit`)
from nothing; see that folder's README.md for the recipe and what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from helpers.progress import progress_bar

PARAMS_PER_MAP = 6  # a, b, c, d (linear part), e, f (translation)
DEFAULT_OUT = Path(__file__).parent / "assets" / "tiny-vit"


# ---------------------------------------------------------------- fractal categories
def largest_singular_values(maps: np.ndarray) -> np.ndarray:
    """The largest singular value of each map's linear part; `maps` has shape [..., 6]."""
    linear = np.asarray(maps, dtype=np.float64)[..., :4].reshape(*np.shape(maps)[:-1], 2, 2)
    return np.linalg.svd(linear, compute_uv=False)[..., 0]


def sample_category(rng: np.random.Generator, n_maps: tuple[int, int] = (2, 4)) -> np.ndarray:
    """A random IFS: [M, 6] maps with M in `n_maps` (inclusive), every map contractive (largest singular value < 1).

    Without contraction the chaos game diverges or smears into a structureless starburst.
    """
    low, high = n_maps
    if not 1 <= low <= high:
        raise ValueError(f"n_maps must be (low, high) with 1 <= low <= high, got {n_maps}.")
    count = int(rng.integers(low, high + 1))
    while True:
        maps = rng.uniform(-1.0, 1.0, (count, PARAMS_PER_MAP))
        if largest_singular_values(maps).max() < 1.0:
            return maps


def stack_categories(categories: list[np.ndarray]) -> np.ndarray:
    """Pad IFS of different map counts to one array [N, M_max, 6]; padded maps have det 0, so are never chosen."""
    width = max(len(c) for c in categories)
    stacked = np.zeros((len(categories), width, PARAMS_PER_MAP))
    for row, category in zip(stacked, categories):
        row[: len(category)] = category
    return stacked


def render(ifs: np.ndarray, n_points: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw each IFS of `ifs` [N, M, 6] as a white-on-black image: float32 [N, size, size] in [0, 1]."""
    ifs = np.asarray(ifs, dtype=np.float64)
    if ifs.ndim != 3 or ifs.shape[-1] != PARAMS_PER_MAP:
        raise ValueError(f"ifs must have shape [N, M, {PARAMS_PER_MAP}], got {ifs.shape}.")
    if n_points < 1 or image_size < 2:
        raise ValueError(f"n_points must be >= 1 and image_size >= 2, got {n_points} and {image_size}.")
    return density_images(*chaos_game(ifs, n_points, rng), image_size)


def chaos_game(ifs: np.ndarray, n_points: int, rng: np.random.Generator, n_chains: int = 128,
               burn_in: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """About `n_points` points (x, y), each [N, P], on the attractor of every IFS of `ifs` [N, M, 6].

    Each image runs `n_chains` chains and all images step together: one numpy step per
    iteration, never a loop over points. Each step applies to every point a map drawn with
    probability proportional to its |det|; the first `burn_in` points of a chain are dropped.
    """
    n_images, n_maps, _ = ifs.shape
    weights = np.abs(ifs[..., 0] * ifs[..., 3] - ifs[..., 1] * ifs[..., 2])
    if (weights.sum(1) == 0).any():
        raise ValueError("Every IFS needs at least one map with a non-zero determinant.")
    cumulative = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    steps = burn_in + -(-n_points // n_chains)
    draws = rng.random((n_images, n_chains, steps))
    chosen = (draws[..., None] > cumulative[:, None, None, :]).sum(-1).clip(max=n_maps - 1)
    chosen += np.arange(n_images)[:, None, None] * n_maps  # row of each chosen map in the flat table
    table = ifs.reshape(-1, PARAMS_PER_MAP).astype(np.float32)

    x, y = rng.uniform(-1, 1, (2, n_images, n_chains)).astype(np.float32)
    xs = np.empty((steps - burn_in, n_images, n_chains), np.float32)
    ys = np.empty_like(xs)
    for step in range(steps):
        a, b, c, d, e, f = np.moveaxis(table[chosen[:, :, step]], -1, 0)
        x, y = a * x + b * y + e, c * x + d * y + f
        if step >= burn_in:
            xs[step - burn_in], ys[step - burn_in] = x, y
    return xs.transpose(1, 0, 2).reshape(n_images, -1), ys.transpose(1, 0, 2).reshape(n_images, -1)


def density_images(xs: np.ndarray, ys: np.ndarray, image_size: int) -> np.ndarray:
    """Points [N, P] as images [N, size, size]: fitted to the canvas along their longer side,
    counted per pixel, shown as log(1 + count) and scaled so each image's brightest pixel is 1."""
    n_images = len(xs)
    span = np.maximum(np.ptp(xs, axis=1), np.ptp(ys, axis=1))[:, None] + 1e-9

    def to_pixels(v):
        centred = (v - (v.min(1, keepdims=True) + v.max(1, keepdims=True)) / 2) / span + 0.5
        return np.clip(np.rint(centred * (image_size - 1)), 0, image_size - 1).astype(np.int64)

    flat = (np.arange(n_images)[:, None] * image_size + to_pixels(ys)) * image_size + to_pixels(xs)
    counts = np.bincount(flat.ravel(), minlength=n_images * image_size**2)
    images = np.log1p(counts.reshape(n_images, image_size, image_size).astype(np.float32))
    return images / images.max(axis=(1, 2), keepdims=True)


def fill_ratio(images: np.ndarray) -> np.ndarray:
    """The share of lit pixels of each image [N, H, W]."""
    return (np.asarray(images) > 0).mean(axis=(-2, -1))


def sample_categories(n: int, rng: np.random.Generator, *, fill: tuple[float, float] = (0.3, 0.85),
                      n_maps: tuple[int, int] = (2, 4), n_points: int = 8000, image_size: int = 32,
                      batch: int = 64, max_tries: int = 100_000) -> list[np.ndarray]:
    """`n` random IFS whose drawings fill a share of the canvas within `fill` (low, high)."""
    if not 0 <= fill[0] < fill[1] <= 1:
        raise ValueError(f"fill must be (low, high) with 0 <= low < high <= 1, got {fill}.")
    kept, tried = [], 0
    while len(kept) < n:
        if tried >= max_tries:
            raise ValueError(f"Only {len(kept)} of {tried} random IFS filled {fill} of the canvas: widen fill.")
        candidates = [sample_category(rng, n_maps) for _ in range(batch)]
        ratios = fill_ratio(render(stack_categories(candidates), n_points, image_size, rng))
        kept += [c for c, r in zip(candidates, ratios) if fill[0] <= r <= fill[1]]
        tried += batch
    return kept[:n]


def jitter_maps(category: np.ndarray, n: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """`n` copies [n, M, 6] of an IFS with Gaussian noise of std `jitter` on every parameter, still contractive.

    A map the noise makes non-contractive has its linear part scaled back to a largest singular value of 0.99.
    """
    maps = category[None] + rng.normal(0.0, jitter, (n, *category.shape))
    maps[..., :4] /= np.maximum(largest_singular_values(maps) / 0.99, 1.0)[..., None]
    return maps


def render_instances(category: np.ndarray, n: int, rng: np.random.Generator, *, jitter: float = 0.05,
                     n_points: int = 8000, image_size: int = 32) -> np.ndarray:
    """`n` instances of one IFS as uint8 [n, size, size]: parameters jittered, half flipped left-right."""
    images = render(jitter_maps(category, n, rng, jitter), n_points, image_size, rng)
    flip = rng.random(n) < 0.5
    images[flip] = images[flip, :, ::-1]
    return np.rint(images * 255).astype(np.uint8)


# ---------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class FractalRecipe:
    """Everything that decides the bundled checkpoint: data, then training."""

    categories: int = 128
    instances: int = 320  # per category
    holdout: float = 0.1  # share of each category's instances kept for validation
    image_size: int = 32
    n_points: int = 8000
    n_maps: tuple[int, int] = (2, 4)
    fill: tuple[float, float] = (0.3, 0.85)
    jitter: float = 0.05
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.categories < 2 or self.instances < 2 or not 0 < self.holdout < 1:
            raise ValueError("A recipe needs at least 2 categories, 2 instances each, and 0 < holdout < 1.")

    @property
    def held_out_instances(self) -> int:
        """Instances per category kept for validation: at least one, and at least one left to train on."""
        return min(max(1, round(self.holdout * self.instances)), self.instances - 1)


def fractal_images(recipe: FractalRecipe, progress: bool = True) -> np.ndarray:
    """The recipe's images, uint8 [categories, instances, size, size]."""
    rng = np.random.default_rng(recipe.seed)
    common = dict(n_points=recipe.n_points, image_size=recipe.image_size)
    categories = sample_categories(recipe.categories, rng, fill=recipe.fill, n_maps=recipe.n_maps, **common)
    return np.stack([
        render_instances(category, recipe.instances, rng, jitter=recipe.jitter, **common)
        for category in progress_bar(categories, desc="rendering fractals", disable=not progress)
    ])


def fractal_datasets(recipe: FractalRecipe, progress: bool = True):
    """(train, val) `helpers.data.TensorImages` of RGB fractals; val holds a `holdout` share of each category."""
    from helpers.data import TensorImages

    images = fractal_images(recipe, progress)
    names = [f"fractal-{i:03d}" for i in range(recipe.categories)]
    def split(part: np.ndarray) -> TensorImages:
        flat = torch.from_numpy(part.reshape(-1, 1, recipe.image_size, recipe.image_size))
        labels = np.repeat(np.arange(recipe.categories), part.shape[1])
        return TensorImages(flat.expand(-1, 3, -1, -1).contiguous(), labels.tolist(), names)
    cut = recipe.instances - recipe.held_out_instances
    return split(images[:, :cut]), split(images[:, cut:])


def smoothed_targets(num_classes: int, smoothing: float):
    """A `fit` batch transform replacing class ids by label-smoothed probabilities."""
    def transform(images: torch.Tensor, labels: torch.Tensor):
        targets = F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes
        return images, targets
    return transform


def image_processor(image_size: int):
    """The processor saved with the checkpoint: resize to `image_size`, scale to [0, 1], normalise to [-1, 1]."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": image_size, "width": image_size},
                             image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pretrain(recipe: FractalRecipe = FractalRecipe(), progress: bool = True):
    """Render the fractals and train the tiny ViT to classify them; returns (model, processor, History)."""
    from transformers import ViTForImageClassification

    from helpers.data import ImageSpec, to_model_input
    from helpers.models import tiny_vit_config
    from helpers.profiles import resolve
    from helpers.train import fit, seed_everything

    processor = image_processor(recipe.image_size)
    train_set, val_set = fractal_datasets(recipe, progress)
    transform = to_model_input(ImageSpec.from_processor(processor))
    config = tiny_vit_config(recipe.categories)
    config.id2label = dict(enumerate(train_set.classes))
    config.label2id = {name: i for i, name in enumerate(train_set.classes)}
    seed_everything(recipe.seed)
    model = ViTForImageClassification(config)
    settings = resolve("cpu", epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                       weight_decay=recipe.weight_decay, warmup_ratio=recipe.warmup_ratio, seed=recipe.seed)
    history = fit(model, train_set.with_transform(transform), val_set.with_transform(transform), settings,
                  batch_transform=smoothed_targets(recipe.categories, recipe.label_smoothing), progress=progress)
    return model, processor, history


def main(argv: list[str] | None = None) -> None:
    """Command line: rebuild the bundled checkpoint (or a variant) and save it in Hugging Face format."""
    defaults = FractalRecipe()
    parser = argparse.ArgumentParser(prog="python -m helpers.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the checkpoint to")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--categories", type=int, default=defaults.categories)
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    recipe = dataclasses.replace(defaults, epochs=args.epochs, categories=args.categories,
                                 instances=args.instances, seed=args.seed)
    started = time.perf_counter()
    model, processor, history = pretrain(recipe)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(history)
    print(f"held-out fractal accuracy {history.rows[-1]['val_accuracy']:.2%}; "
          f"{(time.perf_counter() - started) / 60:.1f} min; saved to {args.out}")


if __name__ == "__main__":
    main()
