"""helpers.train.optim: which parameters decay, the optimizers, the schedule's values step by step, step counts."""
import math
import re

import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from helpers import profiles
from helpers.train import optim


def one_block_vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=16, num_labels=2))


DECAYED = {  # the weight matrices: of the patch projection, the attention, the MLP and the classifier
    "vit.embeddings.patch_embeddings.projection.weight",
    *(f"vit.layers.0.attention.{p}_proj.weight" for p in "qkvo"),
    "vit.layers.0.mlp.fc1.weight", "vit.layers.0.mlp.fc2.weight", "classifier.weight",
}
NOT_DECAYED = {  # biases, layernorms, the CLS token and the position embeddings
    "vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
    "vit.embeddings.patch_embeddings.projection.bias",
    *(f"vit.layers.0.attention.{p}_proj.bias" for p in "qkvo"),
    "vit.layers.0.layernorm_before.weight", "vit.layers.0.layernorm_before.bias",
    "vit.layers.0.layernorm_after.weight", "vit.layers.0.layernorm_after.bias",
    "vit.layers.0.mlp.fc1.bias", "vit.layers.0.mlp.fc2.bias",
    "vit.layernorm.weight", "vit.layernorm.bias", "classifier.bias",
}


def names_in(group, model):
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)] for p in group["params"]}


def test_parameter_groups_name_every_vit_parameter_in_the_right_group():
    model = one_block_vit()
    decay, no_decay = optim.parameter_groups(model, weight_decay=0.05)
    assert names_in(decay, model) == DECAYED and decay["weight_decay"] == 0.05
    assert names_in(no_decay, model) == NOT_DECAYED and no_decay["weight_decay"] == 0.0
    assert set(decay) == set(no_decay) == {"params", "weight_decay"}


def test_parameter_groups_leave_frozen_parameters_out():
    model = one_block_vit()
    model.vit.embeddings.requires_grad_(False)
    model.classifier.bias.requires_grad_(False)
    decay, no_decay = optim.parameter_groups(model, weight_decay=0.1)
    assert names_in(decay, model) == DECAYED - {"vit.embeddings.patch_embeddings.projection.weight"}
    assert names_in(no_decay, model) == NOT_DECAYED - {
        "vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
        "vit.embeddings.patch_embeddings.projection.bias", "classifier.bias"}


class Named(nn.Module):
    """Parameters whose names and shapes probe the no-decay rule one part at a time."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Parameter(torch.zeros(3, 3))  # a matrix with a plain name: decays
        self.scale = nn.Parameter(torch.zeros(3))  # 1-D, any name: no decay
        self.offset = nn.Parameter(torch.zeros(()))  # 0-D: no decay
        self.RMSNorm_gain = nn.Parameter(torch.zeros(3, 3))  # 2-D but a norm, named in capitals
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))  # timm's position embedding
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 3))
        self.bias_table = nn.Parameter(torch.zeros(2, 3))  # named as a bias


def test_no_decay_is_by_shape_or_by_name_ignoring_case():
    model = Named()
    rule = {name: optim.is_no_decay(name, param) for name, param in model.named_parameters()}
    assert rule == {"fc": False, "scale": True, "offset": True, "RMSNorm_gain": True, "pos_embed": True,
                    "cls_token": True, "bias_table": True}


def test_make_optimizer_builds_adamw_and_sgd_over_the_groups():
    model = one_block_vit()
    groups = optim.parameter_groups(model, 0.05)
    adamw = optim.make_optimizer("adamw", groups, lr=3e-4)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 3e-4
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    assert [len(g["params"]) for g in adamw.param_groups] == [len(DECAYED), len(NOT_DECAYED)]
    assert not adamw.defaults["fused"]  # fused AdamW needs a GPU
    sgd = optim.make_optimizer("sgd", optim.parameter_groups(model, 0.0), lr=0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="^" + re.escape("Unknown optimizer 'adam': choose one of adamw, sgd.") + "$"):
        optim.make_optimizer("adam", groups, lr=1e-3)


def test_adamw_is_fused_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # fused AdamW also runs on the CPU, to check it
    adamw = optim.make_optimizer("adamw", optim.parameter_groups(one_block_vit(), 0.05), lr=3e-4)
    assert adamw.defaults["fused"] is True


@pytest.mark.parametrize("schedule, after_warmup", [
    # warmup 4 of 12 steps: 1/5 .. 4/5, then the shape over the 8 steps left (progress 0, 1/8, ..., 7/8)
    ("warmup_cosine", [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]),
    ("linear", [1 - k / 8 for k in range(8)]),
    ("constant", [1.0] * 8),
])
def test_lr_factor_warms_up_linearly_then_follows_the_schedule(schedule, after_warmup):
    factors = [optim.lr_factor(schedule, step, 4, 12) for step in range(12)]
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, *after_warmup], abs=1e-12)


@pytest.mark.parametrize("schedule, end", [("warmup_cosine", 0.0), ("linear", 0.0), ("constant", 1.0)])
def test_lr_factor_stays_at_the_end_value_past_the_last_step(schedule, end):
    assert optim.lr_factor(schedule, 12, 4, 12) == pytest.approx(end, abs=1e-12)
    assert optim.lr_factor(schedule, 30, 4, 12) == pytest.approx(end, abs=1e-12)  # clamped, not extrapolated


def test_lr_factor_when_warmup_takes_every_step():
    assert optim.lr_factor("linear", 3, 4, 4) == pytest.approx(0.8)
    assert optim.lr_factor("linear", 4, 4, 4) == 1.0  # progress 0 of no steps left
    assert optim.lr_factor("linear", 5, 4, 4) == 0.0  # one step past the end: progress 1, not 1/2
    assert optim.lr_factor("warmup_cosine", 0, 0, 1) == 1.0  # no warmup: the peak at once


def test_unknown_schedule_fails_when_the_scheduler_is_made_even_during_warmup():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    message = re.escape("Unknown schedule 'cosine': choose one of warmup_cosine, linear, constant.")
    with pytest.raises(ValueError, match=message):
        optim.make_scheduler(optimizer, "cosine", warmup_steps=5, total_steps=10)
    with pytest.raises(ValueError, match=message):
        optim.lr_factor("cosine", 5, 5, 10)


def lrs_of(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_scheduler_sets_every_group_to_its_own_lr_times_the_factor(schedule):
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0},
                                 {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=1.0)
    scheduler = optim.make_scheduler(optimizer, schedule, warmup_steps=3, total_steps=10)
    lrs = lrs_of(scheduler, optimizer, 10)
    assert [first for first, _ in lrs] == pytest.approx([optim.lr_factor(schedule, s, 3, 10) for s in range(10)])
    assert [second for _, second in lrs] == pytest.approx([0.1 * first for first, _ in lrs])


def test_warmup_cosine_is_the_named_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    lrs = [lr for [lr] in lrs_of(optim.warmup_cosine(optimizer, 2, 6), optimizer, 6)]
    assert lrs == pytest.approx([2 / 3, 4 / 3, 2.0, 2 * 0.5 * (1 + math.cos(math.pi / 4)), 1.0,
                                 2 * 0.5 * (1 + math.cos(3 * math.pi / 4))], abs=1e-12)


def test_schedule_curve_is_the_lr_at_every_optimizer_step():
    steps = optim.RunSteps(per_epoch=3, total=6, warmup=2)
    assert optim.schedule_curve("linear", 0.5, steps) == pytest.approx([0.5 / 3, 1 / 3, 0.5, 0.375, 0.25, 0.125])


@pytest.mark.parametrize("images, batch_size, grad_accum, epochs, warmup_ratio, processes, expected", [
    (100, 16, 1, 1, 0.0, 1, (7, 7, 0)),  # 100 / 16 = 6.25 -> 7 batches, the last one short
    (100, 16, 3, 2, 0.25, 1, (3, 6, 2)),  # 7 batches, a step every 3 and at the end of the epoch
    (100, 16, 3, 2, 0.25, 2, (2, 4, 1)),  # each of 2 processes sees 4 of the 7 batches
    (96, 16, 2, 3, 0.1, 4, (1, 3, 0)),  # 6 batches over 4 processes: 2 each, one step
    (13, 1, 1, 1, 0.1, 1, (13, 13, 1)),  # warmup rounds 1.3 down
    (15, 1, 1, 1, 0.1, 1, (15, 15, 2)),  # and 1.5 to the even 2
])
def test_run_steps_counts_optimizer_steps(images, batch_size, grad_accum, epochs, warmup_ratio, processes, expected):
    settings = profiles.resolve("smoke", batch_size=batch_size, grad_accum=grad_accum, epochs=epochs,
                                warmup_ratio=warmup_ratio)
    assert optim.run_steps(images, settings, processes) == optim.RunSteps(*expected)
    if processes == 1:
        assert optim.run_steps(images, settings) == optim.RunSteps(*expected)  # one process by default
