"""Lesson 07's recipe as a script: `python -m helpers.course finetune --data imagefolder:PATH --model ID_OR_FOLDER`.

    python -m helpers.course finetune --data imagefolder:~/photos --model tiny-vit --out build/my-model
    torchrun --nproc_per_node 4 -m helpers.course finetune --data imagefolder:~/photos \\
        --model google/vit-base-patch16-224-in21k --profile gpu --out build/my-model

scan -> resized cache -> near-duplicates -> group-aware split -> fine-tune (probe, lora or full) -> evaluate ->
save with the model card. Unchanged under `torchrun` / `accelerate launch`: every process reads the folder and
trains on its shard of each batch (`batch_size` is per process, so the effective batch is batch_size x processes
x grad_accum); process 0 prepares the cache first and alone writes the results.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from helpers import models, profiles
from helpers.data.folders import MIN_CLASS_IMAGES, FolderScan, scan_folder
from helpers.data.images import FileImages
from helpers.data.photos import NearDuplicate, dataset_hashes, near_duplicates
from helpers.data.splits import Splits, group_split_dataset, merge_groups, name_groups
from helpers.data.transforms import ImageSpec, eval_transform, to_model_input
from helpers.evaluate.calibration import apply_temperature, expected_calibration_error, fit_temperature
from helpers.evaluate.metrics import ClassReport, bootstrap_ci, confusion_matrix, most_confused_pairs, per_class_report
from helpers.evaluate.predict import Predictions, predict
from helpers.export import ModelCard, save_adapter, save_for_pipeline
from helpers.freezing import add_lora, fast_linear_probe, full_finetune
from helpers.train.history import History
from helpers.train.loop import fit, make_accelerator

STRATEGIES = ("probe", "lora", "full")


CACHE_FACTOR = 2  # the cache keeps photos at twice the model's input side


@dataclass
class PhotoFolder:
    """A scanned folder of photos, decoded once into the cache, with its near-duplicates and groups (lesson 07)."""

    scan: FolderScan
    photos: FileImages  # the cached, resized photos, in scan order
    hashes: list[int]
    pairs: list[NearDuplicate]
    groups: list[int]  # items that must stay in one split share a group


def check_folder(scan: FolderScan) -> None:
    """Raise ValueError with one sentence when a scanned folder cannot make a classifier (lesson 07).

    The scan has already left out class folders with fewer than `MIN_CLASS_IMAGES` readable photos;
    this names them when fewer than two classes remain."""
    root = scan.root
    nested = [d.name for d in sorted(root.iterdir()) if d.is_dir() and any(p.is_dir() for p in d.iterdir())]
    if not scan.classes and not scan.problems:
        raise ValueError(f"{root} is empty: put one sub-folder of photos per class inside it.")
    if len(scan.classes) < 2 and nested:
        raise ValueError(f"The classes of {root} sit one level deeper, in sub-folders of {', '.join(nested)}: "
                         "point the folder argument at the folder whose sub-folders are the classes.")
    if len(scan.classes) < 2:
        left_out = [f"{p.path.name} ({p.issue})" for p in scan.left_out]
        why = f", after leaving out {'; '.join(left_out)}" if left_out else ""
        raise ValueError(f"{root} holds {len(scan.classes)} usable class folder(s){why}: a classifier needs at "
                         f"least two sub-folders, one per class, each with {MIN_CLASS_IMAGES} or more photos.")


def load_photos(folder, short_side: int, cache_dir, *, group_pattern: str | None = None, max_distance: int = 8,
                progress: bool = True, scan: FolderScan | None = None) -> PhotoFolder:
    """Scan `folder` (unless its `scan` is given), decode each photo once into the cache, hash it, and group
    near-duplicates (lesson 07).

    `group_pattern` (a regex on file names, see `helpers.data.name_groups`) keeps photos of one session
    or person together too. Every check runs before anything is written.
    """
    scan = scan or scan_folder(folder)
    check_folder(scan)
    photos = FileImages(scan.paths, scan.labels, scan.classes).prepared(short_side, cache_dir, progress)
    hashes = dataset_hashes(photos, progress)
    pairs = near_duplicates(hashes, max_distance)
    named = name_groups(scan.paths, group_pattern) if group_pattern else None
    return PhotoFolder(scan, photos, hashes, pairs, merge_groups(len(photos), pairs, named))


def train_transform(spec: ImageSpec, flips: bool = True) -> v2.Compose:
    """Resize, random horizontal and vertical flips (they keep the label of a surface, a texture, a cell), then
    the model's normalisation (lesson 07). Without `flips`: the eval transform."""
    if not flips:
        return eval_transform(spec)
    return v2.Compose([v2.Resize(spec.size, antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                       to_model_input(spec)])


def fit_strategy(model, strategy: str, splits: Splits, spec: ImageSpec, settings: profiles.Settings, *,
                 flips: bool = True, accelerator=None, progress: bool = True) -> tuple[torch.nn.Module, History]:
    """Train `model` on raw `splits` with `strategy`: 'probe' (cached features, the baseline), 'lora' or 'full';
    returns the model to evaluate (a LoRA model wraps the original) and its History (lesson 07)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}.")
    evaluation = eval_transform(spec)
    if strategy == "probe":
        probe = fast_linear_probe(model, splits.train.with_transform(evaluation), splits.val.with_transform(evaluation),
                                  settings, progress=progress)
        return model, probe.history
    model = add_lora(model) if strategy == "lora" else model
    if strategy == "full":
        full_finetune(model)
    history = fit(model, splits.train.with_transform(train_transform(spec, flips)),
                  splits.val.with_transform(evaluation), settings, accelerator=accelerator, progress=progress)
    return model, history


@dataclass
class Evaluation:
    """A model's test and validation predictions with the numbers a model card reports (lesson 07)."""

    test: Predictions
    val: Predictions
    report: ClassReport
    interval: tuple[float, float]
    ece: float  # on the test set, after temperature scaling fitted on validation
    temperature: float

    @property
    def test_accuracy(self) -> float:
        return self.report.accuracy

    @property
    def val_accuracy(self) -> float:
        return float(self.val.correct.mean())


def evaluate_model(model, splits: Splits, spec: ImageSpec, batch_size: int, progress: bool = False) -> Evaluation:
    """Predict validation and test once; per-class report, bootstrap interval, temperature and ECE (lesson 07)."""
    evaluation = eval_transform(spec)
    test = predict(model, splits.test.with_transform(evaluation), batch_size, progress=progress)
    val = predict(model, splits.val.with_transform(evaluation), batch_size, progress=progress)
    temperature = fit_temperature(val.logits, val.labels)
    ece = expected_calibration_error(apply_temperature(test.logits, temperature), test.labels)
    report = per_class_report(test.preds, test.labels, splits.classes)
    return Evaluation(test, val, report, bootstrap_ci(test.correct), ece, temperature)


def failure_modes(result: Evaluation, classes: list[str], k: int = 3) -> list[str]:
    """Sentences on the weakest class and the pairs most often confused, from the test predictions (lesson 07)."""
    worst = min(result.report.classes, key=lambda row: row.recall)
    lines = [f"lowest recall: {worst.name} ({worst.recall:.0%} of its {worst.support} test photos found)"]
    matrix = confusion_matrix(result.test.preds, result.test.labels, len(classes))
    lines += [f"{pair.true_class} taken for {pair.predicted_class}: {pair.count} of its test photos "
              f"({pair.fraction:.0%})" for pair in most_confused_pairs(matrix, classes, k)]
    return lines


def model_card(result: Evaluation, splits: Splits, settings: profiles.Settings, strategy: str, data: str,
               split_rule: str, limits: str = "") -> ModelCard:
    """The model card of a fine-tune, written from its evaluation (lesson 07)."""
    keep = ("model_name", "epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "grad_accum", "seed")
    return ModelCard(
        base_model=settings.model_name, classes=splits.classes, data=data,
        splits={name: len(getattr(splits, name)) for name in ("train", "val", "test")}, split_rule=split_rule,
        strategy=strategy, test_accuracy=result.test_accuracy, interval=result.interval, ece=result.ece,
        temperature=result.temperature, per_class=result.report.to_markdown(),
        failure_modes=failure_modes(result, splits.classes), limits=limits,
        settings={"strategy": strategy, **{name: getattr(settings, name) for name in keep}},
    )


def run_recipe(folder, settings: profiles.Settings, out, *, strategy: str = "lora", flips: bool = True,
               group_pattern: str | None = None, cache_dir=None, progress: bool = True) -> dict:
    """The whole recipe on a class-per-sub-folder photo folder; writes `out/model` (with README.md, the card),
    `out/adapter` for LoRA, and `out/metrics.json` from process 0; returns the metrics (lesson 07)."""
    started = time.perf_counter()
    accelerator = make_accelerator(settings)
    out = Path(out).expanduser()
    _, processor = models.load_model(settings.model_name, ["?"])  # the input size decides the cache's
    spec = ImageSpec.from_processor(processor)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else out.parent / f".{out.name}-cache"
    scan = scan_folder(folder)
    check_folder(scan)  # on every process, so a bad folder stops them all with the same sentence
    with accelerator.main_process_first():  # process 0 decodes; the others find the cache full
        photos = load_photos(folder, CACHE_FACTOR * max(spec.size), cache_dir, group_pattern=group_pattern,
                             progress=progress and accelerator.is_main_process, scan=scan)
    splits = group_split_dataset(photos.photos, photos.groups, str(folder), settings.seed)
    torch.manual_seed(settings.seed)  # the same new head on every process
    model, processor = models.load_model(settings.model_name, splits.classes)
    model, history = fit_strategy(model, strategy, splits, spec, settings, flips=flips, accelerator=accelerator,
                                  progress=progress and accelerator.is_main_process)
    result = evaluate_model(model, splits, spec, settings.batch_size)
    metrics = {"strategy": strategy, "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
               "interval": list(result.interval), "ece": result.ece, "temperature": result.temperature,
               "processes": accelerator.num_processes, "near_duplicate_pairs": len(photos.pairs),
               "best_epoch": history.best["epoch"], "seconds": time.perf_counter() - started}
    if accelerator.is_main_process:
        card = model_card(result, splits, settings, strategy, f"{len(photos.photos)} photos from {folder}.",
                          "Near-duplicates (perceptual hash) and named groups never straddle two splits.")
        if strategy == "lora":
            save_adapter(model, out / "adapter")
        save_for_pipeline(model, processor, out / "model", card)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    accelerator.wait_for_everyone()
    return metrics


class FinetuneCommand:
    name, help = "finetune", "lesson 07's recipe on a photo folder: split, fine-tune, evaluate, save with a model card"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--data", required=True, help="imagefolder:PATH, one sub-folder of photos per class")
        parser.add_argument("--model", default=None, help="hub id, save_pretrained folder or tiny-vit")
        parser.add_argument("--strategy", default="lora", choices=STRATEGIES)
        parser.add_argument("--profile", default="auto", choices=profiles.PROFILE_NAMES)
        parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                            help="override one setting, e.g. -p epochs 3 -p batch_size 32 (per process)")
        parser.add_argument("--group-pattern", default=None, help=r"regex on file names for groups, e.g. '^(\w+?)_'")
        parser.add_argument("--no-flips", action="store_true", help="train without random flips")
        parser.add_argument("--cache-dir", default=None)
        parser.add_argument("--out", type=Path, default=Path("build") / "finetuned")

    def run(self, args) -> int:
        from helpers.course.runner import parse_overrides

        if not args.data.startswith("imagefolder:"):
            raise ValueError(f"--data {args.data!r} is not a photo folder: write imagefolder:PATH.")
        overrides = parse_overrides(args.param)
        if args.model:
            overrides["model_name"] = args.model
        settings = profiles.resolve(args.profile, **overrides)
        try:
            metrics = run_recipe(args.data.split(":", 1)[1], settings, args.out, strategy=args.strategy,
                                 flips=not args.no_flips, group_pattern=args.group_pattern, cache_dir=args.cache_dir)
        except (FileNotFoundError, models.ModelUnavailable) as error:
            raise ValueError(str(error)) from None
        if make_accelerator(settings).is_main_process:
            print(f"{args.strategy}: test accuracy {metrics['test_accuracy']:.1%} (validation "
                  f"{metrics['val_accuracy']:.1%}); model, card and metrics written to {args.out}")
        return 0
