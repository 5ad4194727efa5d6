"""Does fractal pretraining transfer? The bundled tiny ViT against the same ViT from random init, on digits.

Arms: {random init, pretrained} x {full fine-tune, linear probe on pooled or on all patch tokens}
x {all training images, 10 labelled images per class}, each over several seeds (mean ± std), beside logistic
regression and an RBF SVC on raw pixels. Same splits as the course (`load_dataset("digits")`),
the `cpu` profile's fine-tune settings (or `--epochs`/`--lr`), equal budget for both inits.

    python bench/transfer.py [--seeds 3] [--model tiny-vit] [--threads N] [--epochs 20 --lr 2e-3]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from helpers.data import ImageSpec, load_dataset, make_loader, to_model_input
from helpers.models import load_model
from helpers.profiles import KEEP, Settings, resolve
from helpers.train import fit

LABELS_PER_CLASS = 10
FEW_SHOT_EPOCHS = 60  # 100 images: 60 epochs is about the optimizer steps of 6 epochs on all images
FEW_SHOT_BATCH = 20


@dataclass
class Result:
    """Test accuracies over seeds (and seconds spent) of one arm."""

    accuracies: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{100 * np.mean(self.accuracies):5.1f} ± {100 * np.std(self.accuracies):3.1f}"
        return text + (f"  ({np.mean(self.seconds):4.0f} s)" if self.seconds else "         ")


def labelled_subset(dataset, per_class: int, seed: int):
    """`per_class` images of each class of `dataset`, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.array(dataset.labels)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return dataset.subset(sorted(np.concatenate(picks).tolist()))


PROBES = ("probe: pooled", "probe: tokens")


@torch.inference_mode()
def logits(model, dataset) -> np.ndarray:
    """The logits of `model` for every image of `dataset`."""
    model.eval()
    return torch.cat([model(images).logits for images, _ in make_loader(dataset, 256)]).numpy()


@torch.inference_mode()
def frozen_features(model, dataset) -> dict[str, np.ndarray]:
    """Last-layer features of every image, from one pass: `pooled` (CLS token ⊕ mean patch token, 2 x width)
    and `tokens` (every patch token, in place: keeps where each stroke is)."""
    model.eval()
    pooled, tokens = [], []
    for images, _ in make_loader(dataset, 256):
        hidden = model.vit(images).last_hidden_state
        pooled.append(torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1))
        tokens.append(hidden[:, 1:].flatten(1))
    return {"pooled": torch.cat(pooled).numpy(), "tokens": torch.cat(tokens).numpy()}


def pixels(dataset) -> np.ndarray:
    """Raw pixels of a uint8 dataset as [N, H*W] floats in [0, 1] (one channel: the images are grey)."""
    return np.stack([dataset.image(i)[0].flatten().numpy() / 255.0 for i in range(len(dataset))])


def logistic_regression():
    """Standardised features, then L2-regularised logistic regression (the same for every probe)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))


def run_arms(model_name: str, seeds: int, settings: Settings) -> dict[tuple[str, str, str], Result]:
    """Fine-tune and linear-probe arms, for both inits and both label budgets, fine-tuning with `settings`
    (the 10/class arm with its own epochs and batch)."""
    splits = load_dataset("digits", seed=0)
    test_labels, test_pixels = np.array(splits.test.labels), pixels(splits.test)
    results: dict[tuple[str, str, str], Result] = {}
    for seed in range(seeds):
        few_labels = labelled_subset(splits.train, LABELS_PER_CLASS, seed)
        train_sets = {"all": splits.train, f"{LABELS_PER_CLASS}/class": few_labels}
        for init in ("random init", "pretrained"):
            for budget, train in train_sets.items():
                torch.manual_seed(seed)
                model, processor = load_model(model_name, splits.classes, random_init=init == "random init")
                transform = to_model_input(ImageSpec.from_processor(processor))
                train_t, val_t, test_t = (d.with_transform(transform) for d in (train, splits.val, splits.test))

                train_features, test_features = frozen_features(model, train_t), frozen_features(model, test_t)
                probes = {}
                for probe in PROBES:
                    features = probe.split()[-1]
                    classifier = logistic_regression().fit(train_features[features], train.labels)
                    probes[probe] = classifier.score(test_features[features], test_labels)
                    results.setdefault((init, probe, budget), Result()).accuracies.append(probes[probe])

                overrides = {} if budget == "all" else dict(epochs=FEW_SHOT_EPOCHS, batch_size=FEW_SHOT_BATCH)
                history = fit(model, train_t, val_t, settings, seed=seed, progress=False, **overrides)
                accuracy = float((logits(model, test_t).argmax(1) == test_labels).mean())
                arm = results.setdefault((init, "full fine-tune", budget), Result())
                arm.accuracies.append(accuracy)
                arm.seconds.append(sum(history.column("seconds")))
                print(f"seed {seed} {init:>11} {budget:>8}: fine-tune {accuracy:.2%}, "
                      + ", ".join(f"{probe} {value:.2%}" for probe, value in probes.items()), flush=True)
        for budget, train in train_sets.items():
            train_pixels = pixels(train)
            for name, classifier in (("logistic regression", logistic_regression()), ("RBF SVC", SVC())):
                classifier.fit(train_pixels, train.labels)
                accuracy = classifier.score(test_pixels, test_labels)
                results.setdefault(("raw pixels", name, budget), Result()).accuracies.append(accuracy)
    return results


def table(results: dict[tuple[str, str, str], Result]) -> str:
    budgets = list(dict.fromkeys(budget for _, _, budget in results))
    rows = sorted(dict.fromkeys((init, method) for init, method, _ in results),
                  key=lambda row: (["random init", "pretrained", "raw pixels"].index(row[0]), row[1] in PROBES, row[1]))
    header = f"{'weights':<12} {'method':<20}" + "".join(f" {b:>24}" for b in budgets)
    lines = [header, "-" * len(header)]
    for init, method in rows:
        cells = "".join(f" {str(results.get((init, method, b), '')):>24}" for b in budgets)
        lines.append(f"{init:<12} {method:<20}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="tiny-vit", help="the pretrained model to test (name or folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--epochs", type=int, default=KEEP, help="fine-tune epochs (default: the cpu profile's)")
    parser.add_argument("--lr", type=float, default=KEEP, help="fine-tune learning rate (default: the cpu profile's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    settings = resolve("cpu", epochs=args.epochs, lr=args.lr)
    results = run_arms(args.model, args.seeds, settings)
    print()
    print(f"Test accuracy on digits (mean ± std over {args.seeds} seeds; seconds: fine-tune wall time), "
          f"{torch.get_num_threads()} torch threads; fine-tune on all images: {settings.epochs} epochs at lr {settings.lr:g}")
    print(table(results))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
