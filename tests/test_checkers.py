"""Every exercise checker accepts the right answers and rejects plausible wrong ones, with a hint and never the value.

`CASES` is the checker table: for each checker, the answers it must accept and at least three wrong ones
(the unmodified starter, an off-by-one, the neighbouring concept, ...), each with the hint it must give.
A checker that is not in the table fails `test_every_checker_is_in_the_table`.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import train_test_split
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, freezing, profiles
from helpers.course.runner import Result
from helpers.course.sweep import SweepRun, summarize
from helpers.data import augment
from helpers.evaluate import expected_calibration_error, per_class_report, reliability_bins
from helpers.lessons import (
    l00_setup,
    l01_vit_theory,
    l02_freezing,
    l03_datasets,
    l04_augmentation,
    l05_training,
    l06_evaluation,
    l07_your_photos,
    l08_sweep,
)
from helpers.train import History

LESSONS = (l00_setup, l01_vit_theory, l02_freezing, l03_datasets, l04_augmentation, l05_training, l06_evaluation,
           l07_your_photos, l08_sweep)


@dataclass
class Case:
    """One checker, the answers it must accept and the wrong ones (each with a regex of its hint)."""

    checker: Callable
    right: dict[str, Callable[[], tuple]]
    wrong: dict[str, tuple[Callable[[], tuple], str]]
    secrets: Callable[[], list[str]] = list  # the expected value as a failure line must never print it
    kwargs: dict = field(default_factory=dict)


def not_implemented(*args, **kwargs):
    raise NotImplementedError("write your solution here")


STARTER = "Not answered yet"


# ---------------------------------------------------------------- lesson 00: the standard error of an accuracy
P, N = 0.97, 270
SE = math.sqrt(P * (1 - P) / N)

standard_error = Case(
    l00_setup.check_standard_error,
    right={"sqrt(p(1-p)/n)": lambda: (SE, P, N), "as numpy float32": lambda: (np.float32(SE), P, N)},
    wrong={
        "starter": (lambda: (None, P, N), STARTER),
        "in percentage points": (lambda: (100 * SE, P, N), "percentage points"),
        "the variance": (lambda: (SE**2, P, N), "variance"),
        "one image's spread (n forgotten)": (lambda: (math.sqrt(P * (1 - P)), P, N), "divide the variance"),
        "off by one: n + 1 images": (lambda: (math.sqrt(P * (1 - P) / (N + 1)), P, N), r"sqrt\(p \(1 - p\) / n\)"),
        "95% half-width (1.96 SE)": (lambda: (1.96 * SE, P, N), "two standard errors"),
        "training set's size": (lambda: (math.sqrt(P * (1 - P) / 1257), P, N), r"sqrt\(p \(1 - p\) / n\)"),
        "negative": (lambda: (-SE, P, N), "positive number"),
    },
    secrets=lambda: [f"{SE:.4f}", f"{SE:.3g}", f"{SE:.2%}", f"{SE:.1%}"],
)


# ---------------------------------------------------------------- lesson 01: tokens and FLOPs, one attention head
CONFIG = dict(image_size=336, patch_size=14, hidden_size=1024)
TOKENS, D = 577, 1024
FLOPS = 8 * TOKENS * D**2 + 4 * TOKENS**2 * D

token_arithmetic = Case(
    l01_vit_theory.check_token_arithmetic,
    right={"577 tokens, 8ND² + 4N²D": lambda: (TOKENS, FLOPS), "as floats": lambda: (577.0, float(FLOPS))},
    wrong={
        "starter": (lambda: (None, None), STARTER),
        "off by one: no CLS token": (lambda: (576, 0), "CLS token"),
        "patches per side, not per image": (lambda: (24 + 1, 0), "count the patches"),
        "FLOPs without the CLS token": (lambda: (TOKENS, 8 * 576 * D**2 + 4 * 576**2 * D), "CLS token included"),
        "multiply-adds, not FLOPs": (lambda: (TOKENS, FLOPS / 2), "multiply-add counts as 2"),
        "scores only (neighbouring: the N² part)": (lambda: (TOKENS, 4 * TOKENS**2 * D), "four projections"),
        "projections only": (lambda: (TOKENS, 8 * TOKENS * D**2), "weighted sum of V"),
        "a string": (lambda: ("577", FLOPS), "to a number"),
    },
    secrets=lambda: [f"{FLOPS:.4g}", f"{FLOPS / 1e9:.1f}"],
    kwargs=CONFIG,
)


def solution_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1) @ v


attention_head = Case(
    l01_vit_theory.check_attention_head,
    right={"the notebook's solution": lambda: (solution_attention,), "the lesson's attention": lambda: (
        l01_vit_theory.attention,), "F.scaled_dot_product_attention": lambda: (F.scaled_dot_product_attention,)},
    wrong={
        "starter": (lambda: (not_implemented,), STARTER),
        "no scaling": (lambda: (lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1) @ v,), "Divide the scores"),
        "softmax over the queries": (lambda: (lambda q, k, v: (q @ k.transpose(-2, -1) / 4).softmax(-2) @ v,),
                                     "softmax over the keys"),
        "scaled by d, not √d": (lambda: (lambda q, k, v: (q @ k.transpose(-2, -1) / 16).softmax(-1) @ v,),
                                "square root of d"),
        "K not transposed (crashes)": (lambda: (lambda q, k, v: (q @ k).softmax(-1) @ v,), "raised RuntimeError"),
        "the weights, not the output": (lambda: (lambda q, k, v: l01_vit_theory.attention_weights(q, k),),
                                        r"\[batch, queries, value dim\]"),
        "returns nothing": (lambda: (lambda q, k, v: None,), "must return a tensor"),
    },
)


# ---------------------------------------------------------------- lesson 02: freezing and layer-wise lr decay
def vit(blocks=4):
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=blocks,
                                               num_attention_heads=2, intermediate_size=32, num_labels=3))


def frozen(freeze, *args):
    """A 4-block ViT after `freeze(model, *args)`, and its trainable percent."""
    model = vit()
    freeze(model, *args)
    return model, freezing.count_parameters(model).percent


def with_classifier_frozen():
    model, _ = frozen(freezing.freeze_first_blocks, 2)
    model.classifier.requires_grad_(False)
    return model, freezing.count_parameters(model).percent


def last_two_percent():
    return frozen(freezing.freeze_first_blocks, 2)[1]


def last_two_with(percent_of):
    """The right model with `percent_of(its ParameterCount)` as the answered percent."""
    model, _ = frozen(freezing.freeze_first_blocks, 2)
    return model, percent_of(freezing.count_parameters(model))


last_two_blocks = Case(
    l02_freezing.check_last_two_blocks,
    right={"freeze_first_blocks(depth - 2)": lambda: frozen(freezing.freeze_first_blocks, 2),
           "by hand with layer_id": lambda: frozen(lambda m: [p.requires_grad_(freezing.layer_id(n, 4) >= 3)
                                                              for n, p in m.named_parameters()])},
    wrong={
        "starter": (lambda: (vit(), None), "train but should be frozen"),  # nothing frozen, no percent
        "off by one: last block only": (lambda: frozen(freezing.freeze_first_blocks, 3), "frozen but should train"),
        "off by one: last three blocks": (lambda: frozen(freezing.freeze_first_blocks, 1),
                                          "train but should be frozen"),
        "neighbouring: the linear probe": (lambda: frozen(freezing.linear_probe), "frozen but should train"),
        "head frozen too": (with_classifier_frozen, "frozen but should train, e.g. classifier"),
        "percent as a fraction": (lambda: last_two_with(lambda count: count.percent / 100), "fraction"),
        "the trainable count": (lambda: last_two_with(lambda count: count.trainable), "trainable count by the total"),
        "percent never set": (lambda: last_two_with(lambda count: None), "to a number"),
    },
    secrets=lambda: [f"{last_two_percent():.2f}"],
)

LR, DECAY = 1e-3, 0.8


def llrd(exponent: Callable[[int], int], model=None, skip: int = 0, twice: bool = False, names: bool = False):
    """Groups by `layer_id` with lr * DECAY ** exponent(layer), as a learner might write them."""
    model = model or vit()
    by_layer = {}
    for name, param in model.named_parameters():
        by_layer.setdefault(freezing.layer_id(name, 4), []).append(name if names else param)
    groups = [{"params": params, "lr": LR * DECAY ** exponent(layer)} for layer, params in by_layer.items()]
    groups[0]["params"] = groups[0]["params"][skip:]
    if twice:
        groups.append({"params": groups[1]["params"][:1], "lr": groups[1]["lr"]})
    return groups, model, LR, DECAY


def with_frozen_embeddings():
    model = vit()
    model.vit.embeddings.requires_grad_(False)
    return llrd(lambda layer: 5 - layer, model)


llrd_groups = Case(
    l02_freezing.check_llrd_groups,
    right={"the notebook's solution": lambda: llrd(lambda layer: 5 - layer),
           "freezing.llrd_param_groups": lambda: (freezing.llrd_param_groups(m := vit(), LR, DECAY), m, LR, DECAY)},
    wrong={
        "starter": (lambda: (None, vit(), LR, DECAY), STARTER),
        "off by one: the head one step down": (lambda: llrd(lambda layer: 4 - layer), "not lr \\* decay \\*\\*"),
        "neighbouring: decay from the bottom up": (lambda: llrd(lambda layer: layer), "not lr \\* decay \\*\\*"),
        "no decay at all": (lambda: llrd(lambda layer: 0), "not lr \\* decay \\*\\*"),
        "a parameter left out": (lambda: llrd(lambda layer: 5 - layer, skip=1), "in no group"),
        "a parameter in two groups": (lambda: llrd(lambda layer: 5 - layer, twice=True), "two groups"),
        "frozen parameters included": (with_frozen_embeddings, "frozen parameters are in a group"),
        "names instead of parameters": (lambda: llrd(lambda layer: 5 - layer, names=True), "not one of this model"),
        "a dict, not a list of groups": (lambda: ({"params": list(vit().parameters()), "lr": LR}, vit(), LR, DECAY),
                                         "list of dicts"),
    },
)


# ---------------------------------------------------------------- lesson 03: channel statistics and a clean split
def solution_channel_stats(dataset):
    total, squares, pixels = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for index in range(len(dataset)):
        x = dataset.image(index).to(torch.float64) / 255
        total += x.sum((1, 2))
        squares += (x**2).sum((1, 2))
        pixels += x[0].numel()
    mean = total / pixels
    return mean.tolist(), (squares / pixels - mean**2).sqrt().tolist()


def all_images(dataset):
    return torch.stack([dataset.image(i) for i in range(len(dataset))]).double() / 255


def stats_variant(transform):
    def channel_stats(dataset):
        mean, std = data.channel_mean_std(dataset)
        return transform(np.array(mean), np.array(std), all_images(dataset))
    return channel_stats


def channel_stats_secrets():
    mean, std = data.channel_mean_std(l03_datasets.channel_stats_dataset())
    return [f"{v:.3f}" for v in (*mean, *std)]


channel_stats = Case(
    l03_datasets.check_channel_stats,
    right={"the notebook's solution": lambda: (solution_channel_stats,),
           "data.channel_mean_std": lambda: (data.channel_mean_std,),
           "as tensors": lambda: (lambda d: tuple(torch.tensor(v) for v in data.channel_mean_std(d)),)},
    wrong={
        "starter": (lambda: (not_implemented,), STARTER),
        "on the 0-255 scale": (lambda: (stats_variant(lambda m, s, x: (m * 255, s * 255)),), "0-255 scale"),
        "neighbouring: mean of per-image stds": (lambda: (stats_variant(
            lambda m, s, x: (m, x.std((2, 3), correction=0).mean(0).numpy())),), "average of per-image stds"),
        "the variance": (lambda: (stats_variant(lambda m, s, x: (m, s**2)),), "variance"),
        "one mean for all channels": (lambda: (stats_variant(lambda m, s, x: ([float(x.mean())] * 3, s)),),
                                      "average each channel"),
        "std of the image means": (lambda: (stats_variant(lambda m, s, x: (m, x.mean((2, 3)).std(0).numpy())),),
                                   "square root of E\\[x\\^2\\]"),
        "one number, not two": (lambda: (lambda d: 0.5,), "Return two things"),
    },
    secrets=channel_stats_secrets,
)


def first_copy_of_each(dataset):
    first_of = {}
    for index in range(len(dataset)):
        first_of.setdefault(data.content_hash(dataset, index), index)
    return dataset.subset(sorted(first_of.values()))


def last_copy_of_each(dataset):
    last_of = {data.content_hash(dataset, index): index for index in range(len(dataset))}
    return dataset.subset(sorted(last_of.values()))


def without_conflicts(dataset):
    """The careful answer: one copy of each image, and no image whose copies disagree on the label."""
    labels_of = {}
    for index in range(len(dataset)):
        labels_of.setdefault(data.content_hash(dataset, index), set()).add(dataset.labels[index])
    unique = first_copy_of_each(dataset)
    keep = [i for i in range(len(unique)) if len(labels_of[data.content_hash(unique, i)]) == 1]
    return unique.subset(keep)


def without_any_repeated_image(dataset):
    counts = {}
    for index in range(len(dataset)):
        counts[data.content_hash(dataset, index)] = counts.get(data.content_hash(dataset, index), 0) + 1
    return dataset.subset([i for i in range(len(dataset)) if counts[data.content_hash(dataset, i)] == 1])


def split_with(deduplicate, second_fraction=0.15 / 0.85, stratify=True, fixed_seed=None):
    def clean_split(dataset, seed):
        seed = seed if fixed_seed is None else fixed_seed
        unique = deduplicate(dataset)
        labels = np.asarray(unique.labels)
        rest, test = train_test_split(np.arange(len(unique)), test_size=0.15, random_state=seed,
                                      stratify=labels if stratify else None)
        train, val = train_test_split(rest, test_size=second_fraction, random_state=seed,
                                      stratify=labels[rest] if stratify else None)
        return data.Splits(unique.subset(train), unique.subset(val), unique.subset(test), unique.classes)
    return clean_split


def split_as_tuple(dataset, seed):
    splits = split_with(first_copy_of_each)(dataset, seed)
    return splits.train, splits.val, splits.test


clean_split = Case(
    l03_datasets.check_clean_split,
    right={"the notebook's solution (first copy)": lambda: (split_with(first_copy_of_each),),
           "careful: label conflicts dropped": lambda: (split_with(without_conflicts),),
           "data.split_dataset after deduplication": lambda: (
               lambda d, seed: data.split_dataset(first_copy_of_each(d), "clean", seed),)},
    wrong={
        "starter": (lambda: (not_implemented,), STARTER),
        "no deduplication": (lambda: (lambda d, seed: data.split_dataset(d, "raw", seed),),
                             "in two splits|same image twice"),
        "the mislabelled copy kept (last copy)": (lambda: (split_with(last_copy_of_each),),
                                                  "label of a copy filed under another class"),
        "every repeated image dropped": (lambda: (split_with(without_any_repeated_image),), "in no split"),
        "off by one: val fraction not rescaled": (lambda: (split_with(first_copy_of_each, 0.15),),
                                                  "val holds .*scale its fraction"),
        "not stratified": (lambda: (split_with(first_copy_of_each, stratify=False),), "stratify=labels"),
        "a fixed seed": (lambda: (split_with(first_copy_of_each, fixed_seed=0),), "same splits"),
        "a tuple, not Splits": (lambda: (split_as_tuple,), "Return a helpers.data.Splits"),
    },
)


# ---------------------------------------------------------------- lesson 04: MixUp and CutMix's box
def solution_mixup(images, labels, alpha=0.4, num_classes=10):
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    targets = F.one_hot(labels, num_classes).float()
    return lam * images + (1 - lam) * images.roll(1, 0), lam * targets + (1 - lam) * targets.roll(1, 0)


def mixup(lam: Callable[[], float], partner=lambda x: x.roll(1, 0), label_partner=None, label_lam=None):
    """MixUp with the weight from `lam()`, images paired by `partner` and labels by `label_partner`."""
    label_partner = label_partner or partner

    def mix(images, labels):
        weight = lam()
        targets = F.one_hot(labels, 10).float()
        label_weight = weight if label_lam is None else label_lam(weight)
        return (weight * images + (1 - weight) * partner(images),
                label_weight * targets + (1 - label_weight) * label_partner(targets))
    return mix


def beta():
    return float(torch.distributions.Beta(0.4, 0.4).sample())


def mixup_with_random_partners(images, labels):
    order = torch.randperm(len(images))
    return mixup(beta, partner=lambda x: x[order])(images, labels)


labels_valid = Case(
    l04_augmentation.check_labels_valid,
    right={"the notebook's solution": lambda: (solution_mixup,),
           "random partners (randperm)": lambda: (mixup_with_random_partners,),
           "data.mix_batch (MixUp or CutMix)": lambda: (augment.mix_batch(10),)},
    wrong={
        "starter": (lambda: (not_implemented,), STARTER),
        "identity (mixes nothing)": (lambda: (lambda images, labels: (images, labels),), "Nothing is mixed"),
        "lambda = 1": (lambda: (mixup(lambda: 1.0),), "Nothing is mixed"),
        "each image paired with itself": (lambda: (mixup(beta, partner=lambda x: x),), "Nothing is mixed"),
        "lambda = 0 (a swap)": (lambda: (mixup(lambda: 0.0),), "Nothing is mixed"),
        "a fixed lambda of 0.5": (lambda: (mixup(lambda: 0.5),), "same weight"),
        "labels not mixed": (lambda: (lambda images, labels: (mixup(beta)(images, labels)[0], labels),),
                             "do not match"),
        "labels paired the other way (off by one)": (lambda: (mixup(beta, label_partner=lambda x: x.roll(-1, 0)),),
                                                     "do not match"),
        "weights swapped between image and label": (lambda: (mixup(beta, label_lam=lambda w: 1 - w),),
                                                    "do not match"),
    },
)


def solution_box(h, w, lam, generator):
    cut = (1 - lam) ** 0.5
    box_h, box_w = round(h * cut), round(w * cut)
    y1 = int(torch.randint(h - box_h + 1, (1,), generator=generator))
    x1 = int(torch.randint(w - box_w + 1, (1,), generator=generator))
    return x1, y1, x1 + box_w, y1 + box_h


def box_sampler(side=lambda lam: (1 - lam) ** 0.5, extra=1, use_generator=True, swap=False, rounding=round):
    def sampler(h, w, lam, generator):
        cut = side(lam)
        box_h, box_w = rounding(h * cut), rounding(w * cut)
        draw = dict(generator=generator) if use_generator else {}
        y1 = int(torch.randint(h - box_h + extra, (1,), **draw))
        x1 = int(torch.randint(w - box_w + extra, (1,), **draw))
        box = (x1, y1, x1 + box_w, y1 + box_h)
        return (box[1], box[0], box[3], box[2]) if swap else box
    return sampler


cutmix_box = Case(
    l04_augmentation.check_cutmix_box,
    right={"the notebook's solution": lambda: (solution_box,), "augment.cutmix_box": lambda: (augment.cutmix_box,),
           "sides rounded down": lambda: (box_sampler(rounding=math.floor),)},
    wrong={
        "starter": (lambda: (not_implemented,), STARTER),
        "off by one: no + 1 (crashes at lam = 0)": (lambda: (box_sampler(extra=0),), "raised RuntimeError"),
        "off by one: + 2 (sticks out)": (lambda: (box_sampler(extra=2),), "not \\(x1, y1, x2, y2\\) inside it"),
        "ignores its generator": (lambda: (box_sampler(use_generator=False),), "generator passed in"),
        "always top left": (lambda: (lambda h, w, lam, g: (0, 0, round(w * (1 - lam) ** 0.5),
                                                           round(h * (1 - lam) ** 0.5)),), "same place"),
        "neighbouring: area lam, not 1 - lam": (lambda: (box_sampler(side=lambda lam: lam ** 0.5),), "area"),
        "sides (1 - lam), not its square root": (lambda: (box_sampler(side=lambda lam: 1 - lam),), "area"),
        "(y1, x1, y2, x2) order": (lambda: (box_sampler(swap=True),), "aspect ratio|inside it"),
    },
)


# ---------------------------------------------------------------- lesson 05: a learning rate, accumulation
FINDER = l05_training.LRFinderResult(
    lrs=[10.0 ** e for e in range(-6, 0)], losses=[2.3, 2.2, 1.8, 1.1, 0.7, 3.5],
    smoothed=[2.3, 2.25, 2.0, 1.5, 1.0, 2.0],
)  # the smoothed minimum is at 1e-2

lr_choice = Case(
    l05_training.check_lr_choice,
    right={"a tenth of the minimum": lambda: (1e-3, FINDER), "a fifth": lambda: (2e-3, FINDER),
           "a twentieth": lambda: (5e-4, FINDER), "numpy float": lambda: (np.float32(1e-3), FINDER)},
    wrong={
        "starter": (lambda: (None, FINDER), STARTER),
        "the minimum itself": (lambda: (1e-2, FINDER), "too close to the lr at the loss minimum"),
        "off by one decade: a hundredth": (lambda: (1e-4, FINDER), "more than 30 times below"),
        "ten times the minimum": (lambda: (1e-1, FINDER), "too close to the lr at the loss minimum"),
        "the index of the minimum": (lambda: (4, FINDER), "too close"),
        "the first lr tried": (lambda: (FINDER.lrs[0], FINDER), "more than 30 times below"),
        "zero": (lambda: (0.0, FINDER), "positive number"),
    },
    secrets=lambda: [f"{FINDER.lr_at_min / 10:.1e}"],
)

accumulation = Case(
    l05_training.check_accumulation,
    right={"512 // 64": lambda: (8, 64), "numpy integer": lambda: (np.int64(8), 64)},
    wrong={
        "starter": (lambda: (None, 64), STARTER),
        "off by one: 7": (lambda: (7, 64), "not 512"),
        "off by one: 9": (lambda: (9, 64), "not 512"),
        "neighbouring: the effective batch itself": (lambda: (512, 64), "not 512"),
        "512 / 64 as a float": (lambda: (512 / 64, 64), "whole number"),
        "batch size over the target": (lambda: (64 // 512, 64), "whole number"),
    },
    secrets=lambda: ["8"],
)

accumulation_on_four_processes = Case(
    l05_training.check_accumulation,
    right={"512 // (64 x 4)": lambda: (2, 64)},
    wrong={
        "starter": (lambda: (None, 64), STARTER),
        "the processes forgotten": (lambda: (8, 64), "divide 512 by batch_size x processes"),
        "off by one": (lambda: (3, 64), "not 512"),
        "one micro-batch per process": (lambda: (4, 64), "not 512"),
    },
    secrets=lambda: ["2"],
    kwargs=dict(num_processes=4),
)


# ---------------------------------------------------------------- lesson 06: ECE and the class with the lowest recall
def calibration_data(temperature=2.0):
    """Probabilities of a confident model softened by temperature scaling (T = 1: before scaling), and labels."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 2.5
    labels = np.where(rng.random(300) < 0.6, logits.argmax(1), rng.integers(0, 4, 300))
    scaled = np.exp(logits / temperature)
    return scaled / scaled.sum(1, keepdims=True), labels


def notebook_ece(probs, labels, n_edges=16, weighted=True, signed=False):
    confidence, is_correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges, total, gaps = np.linspace(0, 1, n_edges), 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = is_correct[in_bin].mean() - confidence[in_bin].mean()
            gap = gap if signed else abs(gap)
            gaps.append(gap)
            total += in_bin.mean() * gap
    return total if weighted else float(np.mean(gaps))


def largest_gap(probs, labels):
    bins = reliability_bins(probs, labels)
    return float(np.nanmax(np.abs(bins.accuracy - bins.confidence)))


def ece_answer(value_of):
    probs, labels = calibration_data()
    return value_of(probs, labels), probs, labels


ece = Case(
    l06_evaluation.check_ece,
    right={"the notebook's loop": lambda: ece_answer(notebook_ece),
           "evaluate.expected_calibration_error": lambda: ece_answer(expected_calibration_error),
           "as numpy float32": lambda: ece_answer(lambda p, y: np.float32(expected_calibration_error(p, y)))},
    wrong={
        "starter": (lambda: (None, *calibration_data()), STARTER),
        "neighbouring: the plain mean of the gaps": (lambda: ece_answer(
            lambda p, y: notebook_ece(p, y, weighted=False)), "plain mean"),
        "off by one: 15 edges, 14 bins": (lambda: ece_answer(lambda p, y: notebook_ece(p, y, n_edges=15)),
                                          "Count your bins"),
        "signed gaps": (lambda: ece_answer(lambda p, y: notebook_ece(p, y, signed=True)), "must not cancel"),
        "the largest gap": (lambda: ece_answer(largest_gap), "largest gap"),
        "in percent": (lambda: ece_answer(lambda p, y: 100 * expected_calibration_error(p, y)), "in percent"),
        "neighbouring: before temperature scaling": (lambda: (
            expected_calibration_error(*calibration_data(temperature=1.0)), *calibration_data()),
            "not the calibration error"),
    },
    secrets=lambda: [f"{expected_calibration_error(*calibration_data()):.4f}"],
)


def lesson_like_report():
    """A report where the class with the lowest recall ('3') also has the lowest F1 and precision, as in lesson 06."""
    labels = np.repeat(np.arange(4), [10, 10, 10, 10])
    preds = labels.copy()
    preds[30:36] = [0, 1, 2, 0, 1, 2]  # class 3: 4 of 10 found
    preds[[0, 10, 20]] = 3  # and three images wrongly called 3
    return per_class_report(preds, labels, ["0", "1", "2", "3"])


def by(column, pick=min):
    return lambda report: pick(report.classes, key=lambda row: getattr(row, column)).name


worst_recall = Case(
    l06_evaluation.check_worst_recall,
    right={"min by recall": lambda: (by("recall"), lesson_like_report()),
           "sorted by recall": lambda: (lambda r: sorted(r.classes, key=lambda row: row.recall)[0].name,
                                        lesson_like_report())},
    wrong={
        "starter": (lambda: (not_implemented, lesson_like_report()), STARTER),
        "neighbouring: lowest F1": (lambda: (by("f1"), lesson_like_report()), "not precision, F1 or support"),
        "lowest precision": (lambda: (by("precision"), lesson_like_report()), "not precision, F1 or support"),
        "off by one: highest recall": (lambda: (by("recall", max), lesson_like_report()), "some class has less"),
        "fewest images": (lambda: (by("support"), lesson_like_report()), "not precision, F1 or support"),
        "the first row": (lambda: (lambda r: r.classes[0].name, lesson_like_report()), "some class has less"),
        "the row, not its name": (lambda: (lambda r: min(r.classes, key=lambda row: row.recall),
                                           lesson_like_report()), "class's name"),
        "the name, not a function": (lambda: (by("recall")(lesson_like_report()), lesson_like_report()),
                                     "Pass your function"),
    },
)


# ---------------------------------------------------------------- the judgement exercises, one per lesson
QUADRATIC = dict(image_size=448, patch_size=16, hidden_size=768)  # ViT-B/16 at 448 px: 785 tokens


def block_share(tokens=785, width=768, linear=24):
    return 4 * tokens**2 * width / (linear * tokens * width**2 + 4 * tokens**2 * width)


quadratic_share = Case(
    l01_vit_theory.check_quadratic_share,
    right={"4N²D / (24ND² + 4N²D)": lambda: (block_share(),)},
    wrong={
        "starter": (lambda: (None,), STARTER),
        "within attention only (MLP left out)": (lambda: (block_share(linear=8),), "MLP"),
        "off by one: no CLS token": (lambda: (block_share(tokens=784),), "CLS"),
        "in percent": (lambda: (100 * block_share(),), "fraction"),
    },
    secrets=lambda: [f"{block_share():.1%}", f"{block_share():.3f}", f"{block_share():.2f}"],
    kwargs=QUADRATIC,
)


def tiny_vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)
    return ViTForImageClassification(config)


def trains_only(keep):
    model = tiny_vit()
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))
    return model


def kits_bitfit():
    model = tiny_vit()
    freezing.bitfit(model)  # biases, the head and the LayerNorm gains
    return model


bitfit_by_hand = Case(
    l02_freezing.check_bitfit_by_hand,
    right={"biases and the head": lambda: (trains_only(lambda n: n.endswith(".bias") or n.startswith("classifier.")),)},
    wrong={
        "starter": (lambda: (None,), STARTER),
        "neighbouring: the kit's bitfit (LayerNorm gains too)": (lambda: (kits_bitfit(),), "gain"),
        "the head left frozen": (lambda: (trains_only(lambda n: n.endswith(".bias") and "classifier" not in n),),
                                 "classifier"),
        "attention biases only": (lambda: (trains_only(lambda n: (n.endswith(".bias") and "attention" in n)
                                                       or n.startswith("classifier.")),), "biases are still frozen"),
        "everything trains": (lambda: (trains_only(lambda n: True),), "neither a bias"),
    },
)

REVIEW = ["exact duplicate across classes", "empty class folder", "truncated JPEG"]

needs_review = Case(
    l03_datasets.check_needs_review,
    right={"the label conflict and the empty class": lambda: (REVIEW,), "as a set": lambda: (set(REVIEW[:2]),)},
    wrong={
        "starter": (lambda: (None,), STARTER),
        "the label conflict left out": (lambda: (["empty class folder", "truncated JPEG"],), "two classes"),
        "the empty class left out": (lambda: (["exact duplicate across classes"],), "cannot be learned"),
        "neighbouring: a CMYK file too": (lambda: ([*REVIEW[:2], "CMYK JPEG"],), "converted to RGB"),
        "one name, not a list": (lambda: ("exact duplicate across classes",), "list"),
    },
)


def ablation_result():
    accuracies = {"none": [0.970, 0.974, 0.966], "basic": [0.978, 0.974, 0.981], "strong": [0.90, 0.91, 0.89]}
    runs = [l04_augmentation.AblationRun(preset, 15, seed, History([{"seconds": 1.0, "val_accuracy": a}]), a)
            for preset, values in accuracies.items() for seed, a in enumerate(values)]
    return l04_augmentation.AblationResult(0.5, False, 270, runs)


ablation_verdict = Case(
    l04_augmentation.check_ablation_verdict,
    right={"basic within noise": lambda: ("within noise", ablation_result(), "basic", 15),
           "strong worse": lambda: ("worse", ablation_result(), "strong", 15)},
    wrong={
        "starter": (lambda: (None, ablation_result(), "basic", 15), STARTER),
        "a gap inside the rule read as better": (lambda: ("better", ablation_result(), "basic", 15), "noise rule"),
        "the sign turned": (lambda: ("better", ablation_result(), "strong", 15), "sign"),
        "a real gap read as noise": (lambda: ("within noise", ablation_result(), "strong", 15), "larger than"),
        "not a verdict": (lambda: ("same", ablation_result(), "basic", 15), "one of"),
    },
)

STEPS = (1257, profiles.resolve("cpu"))  # 20 batches of 64 per epoch, 15 epochs

step_count = Case(
    l05_training.check_step_count,
    right={"ceil(20 / 8) × 15 = 45, warmup 4": lambda: (45, 4, *STEPS)},
    wrong={
        "starter": (lambda: (None, None, *STEPS), STARTER),
        "neighbouring: batches, not steps": (lambda: (300, 30, *STEPS), "batches, not optimizer steps"),
        "off by one: rounded down": (lambda: (30, 3, *STEPS), "round up"),
        "warmup off by one": (lambda: (45, 5, *STEPS), "warmup"),
        "a fraction of a step": (lambda: (45.5, 4, *STEPS), "whole number"),
    },
    kwargs={"grad_accum": 8},
)

F1_LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
F1_PREDS = np.array([0, 0, 1, 2, 1, 1, 2, 2, 2, 0, 2, 2])


def f1_confusion():
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (F1_LABELS, F1_PREDS), 1)
    return cm


def f1_scores(cm):
    hits = np.diag(cm)
    precision, recall = hits / cm.sum(0), hits / cm.sum(1)
    return precision, recall, 2 * precision * recall / (precision + recall)


def macro(cm):
    return float(f1_scores(cm)[2].mean())


def f1_of_means(cm):
    precision, recall, _ = f1_scores(cm)
    return float(2 * precision.mean() * recall.mean() / (precision.mean() + recall.mean()))


macro_f1 = Case(
    l06_evaluation.check_macro_f1,
    right={"mean of per-class F1": lambda: (macro(f1_confusion()), f1_confusion())},
    wrong={
        "starter": (lambda: (None, f1_confusion()), STARTER),
        "neighbouring: the accuracy": (lambda: ((F1_LABELS == F1_PREDS).mean(), f1_confusion()), "accuracy"),
        "weighted by support": (lambda: (float((f1_scores(f1_confusion())[2] * f1_confusion().sum(1)).sum() / 12),
                                         f1_confusion()), "support"),
        "F1 of the mean precision and recall": (lambda: (f1_of_means(f1_confusion()), f1_confusion()),
                                                "F1 of the mean precision"),
        "in percent": (lambda: (100 * macro(f1_confusion()), f1_confusion()), "between 0 and 1"),
    },
    secrets=lambda: [f"{macro(f1_confusion()):.4f}", f"{macro(f1_confusion()):.3f}"],
)


# ---------------------------------------------------------------- lesson 07: a phone photo upright, a group split
@functools.cache
def phone_photo() -> Path:
    """A photo stored sideways with EXIF orientation 6 (turn 90° clockwise to view), as phones write them."""
    exif = Image.Exif()
    exif[l07_your_photos.ORIENTATION_TAG] = 6
    path = Path(tempfile.mkdtemp(prefix="checker-photo-")) / "sideways.jpg"
    pixels = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))[..., None].repeat(3, 2)
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


def stored_pixels() -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(phone_photo()).convert("RGB")).copy()).permute(2, 0, 1)


upright = Case(
    l07_your_photos.check_upright,
    right={"data.read_photo": lambda: (data.read_photo(phone_photo()), phone_photo())},
    wrong={
        "starter": (lambda: (None, phone_photo()), STARTER),
        "the stored pixels (orientation ignored)": (lambda: (stored_pixels(), phone_photo()), "swapped"),
        "turned the wrong way": (lambda: (data.read_photo(phone_photo()).flip(1, 2), phone_photo()), "not upright"),
        "floats in [0, 1]": (lambda: (data.read_photo(phone_photo()).float() / 255, phone_photo()), "uint8"),
    },
)

GROUPS = [0, 0, 1, 1, 2, 2]  # photos 0 and 1 are one group, 2 and 3 another, ...

group_split = Case(
    l07_your_photos.check_group_split,
    right={"by group": lambda: (([0, 1], [2, 3], [4, 5]), [(0, 1)], GROUPS),
           "as tuples": lambda: (((4, 5), (0, 1), (2, 3)), [(0, 1)], GROUPS)},
    wrong={
        "starter": (lambda: (None, [], GROUPS), STARTER),
        "split by photo (a group across splits)": (lambda: (([0, 2], [1, 3], [4, 5]), [], GROUPS), "two splits"),
        "a near-duplicate pair across splits": (lambda: (([0, 1], [2, 3], [4, 5]), [(1, 2)], GROUPS),
                                                "near-duplicate"),
        "off by one: a photo left out": (lambda: (([0, 1], [2, 3], [4]), [], GROUPS), "exactly one split"),
        "an empty split": (lambda: (([0, 1, 2, 3], [], [4, 5]), [], GROUPS), "each split needs photos"),
        "train and test only": (lambda: (([0, 1, 2, 3], [4, 5]), [], GROUPS), "three lists"),
    },
)


# ---------------------------------------------------------------- lesson 08: the cheapest setting within the noise
def sweep_summaries():
    def run(strategy, seed, val, seconds):
        return SweepRun({"strategy": strategy, "seed": seed}, Result("07", seconds, {"val_accuracy": val}))

    return summarize([run("full", 0, 0.90, 10), run("full", 1, 0.80, 10), run("lora", 0, 0.84, 5),
                      run("lora", 1, 0.84, 5), run("probe", 0, 0.5, 1), run("probe", 1, 0.5, 1)])


cheapest_within_noise = Case(
    l08_sweep.check_cheapest_within_noise,
    right={"lora: within one sd of full, half the time": lambda: ({"strategy": "lora"}, sweep_summaries())},
    wrong={
        "starter": (lambda: (None, sweep_summaries()), STARTER),
        "neighbouring: the best mean": (lambda: ({"strategy": "full"}, sweep_summaries()), "less time"),
        "the cheapest of all": (lambda: ({"strategy": "probe"}, sweep_summaries()), "further than one sd"),
        "not a setting of the sweep": (lambda: ({"strategy": "lora", "lr": 1e-4}, sweep_summaries()),
                                       "not in the sweep"),
        "a name, not a setting": (lambda: ("lora", sweep_summaries()), "as a dict"),
    },
    secrets=lambda: ["lora"],
)


CASES = {
    "check_standard_error": standard_error,
    "check_token_arithmetic": token_arithmetic,
    "check_attention_head": attention_head,
    "check_last_two_blocks": last_two_blocks,
    "check_llrd_groups": llrd_groups,
    "check_channel_stats": channel_stats,
    "check_clean_split": clean_split,
    "check_labels_valid": labels_valid,
    "check_cutmix_box": cutmix_box,
    "check_lr_choice": lr_choice,
    "check_accumulation": accumulation,
    "check_accumulation on 4 processes": accumulation_on_four_processes,
    "check_ece": ece,
    "check_worst_recall": worst_recall,
    "check_quadratic_share": quadratic_share,
    "check_bitfit_by_hand": bitfit_by_hand,
    "check_needs_review": needs_review,
    "check_ablation_verdict": ablation_verdict,
    "check_step_count": step_count,
    "check_macro_f1": macro_f1,
    "check_upright": upright,
    "check_group_split": group_split,
    "check_cheapest_within_noise": cheapest_within_noise,
}

RIGHT = [(name, answer) for name, case in CASES.items() for answer in case.right]
WRONG = [(name, answer) for name, case in CASES.items() for answer in case.wrong]


def mentions(printed: str, secret: str) -> bool:
    """True when `secret` (a formatted number) stands in `printed` as a number of its own."""
    return re.search(rf"(?<![\d.]){re.escape(secret)}(?!\d|\.\d)", printed) is not None


@pytest.mark.parametrize("name, answer", RIGHT, ids=[f"{n}: {a}" for n, a in RIGHT])
def test_the_right_answer_is_accepted(name, answer, capsys):
    case = CASES[name]
    torch.manual_seed(0)
    assert case.checker(*case.right[answer](), **case.kwargs) is True, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("Correct")


@pytest.mark.parametrize("name, answer", WRONG, ids=[f"{n}: {a}" for n, a in WRONG])
def test_a_wrong_answer_gets_a_hint_and_never_the_expected_value(name, answer, not_yet):
    case = CASES[name]
    arguments, hint = case.wrong[answer]
    torch.manual_seed(0)
    printed = not_yet(case.checker, *arguments(), **case.kwargs)
    assert re.search(hint, printed), printed
    assert not [secret for secret in case.secrets() if mentions(printed, secret)], printed


def test_every_checker_is_in_the_table_with_the_starter_and_at_least_three_wrong_answers():
    checkers = {function for lesson in LESSONS for name, function in inspect.getmembers(lesson, inspect.isfunction)
                if name.startswith("check_") and hasattr(function, "__wrapped__")}
    assert checkers == {case.checker for case in CASES.values()}
    for name, case in CASES.items():
        assert "starter" in case.wrong and len(case.wrong) >= 4, name  # the starter and at least three more


def test_checkers_leave_no_trace_in_the_global_random_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert l04_augmentation.check_cutmix_box(solution_box)
    assert l04_augmentation.check_cutmix_box(box_sampler(use_generator=False)) is False
    assert torch.equal(torch.rand(3), expected)
