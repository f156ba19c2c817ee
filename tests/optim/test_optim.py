"""Optimizers build with their settings; schedules follow the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from robotrain.optim.optimizers import AdamConfig, AdamWConfig, SGDConfig
from robotrain.optim.schedulers import (
    CosineDecayWithWarmupSchedulerConfig,
    CosineSchedulerConfig,
    DiffuserSchedulerConfig,
)
from robotrain.policies.vqbet.configuration import VQBeTSchedulerConfig


def test_optimizers_build_with_param_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = AdamWConfig(lr=1e-5, weight_decay=1e-4).build([{"params": [a]}, {"params": [b], "lr": 3e-6}])
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 3e-6] and opt.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(AdamConfig(betas=(0.95, 0.999)).build([a]), torch.optim.Adam)
    assert SGDConfig(momentum=0.9, nesterov=True).build([a]).param_groups[0]["nesterov"] is True


def lr_curve(cfg, steps: int, lr: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cfg.build(opt, steps)
    curve = []
    for _ in range(steps):
        curve.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return curve


def test_diffuser_cosine_warmup_then_decay():
    curve = lr_curve(DiffuserSchedulerConfig(name="cosine", num_warmup_steps=10), 110)
    assert curve[0] == 0.0 and curve[5] == pytest.approx(0.5) and curve[10] == pytest.approx(1.0)
    assert curve[60] == pytest.approx(0.5)  # halfway through the decay
    assert curve[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(x >= y for x, y in zip(curve[10:], curve[11:], strict=False))


def test_cosine_equals_diffuser_cosine():
    assert lr_curve(CosineSchedulerConfig(num_warmup_steps=7), 50) == \
        lr_curve(DiffuserSchedulerConfig(name="cosine", num_warmup_steps=7), 50)


def test_vqbet_schedule_is_flat_during_vqvae_phase():
    curve = lr_curve(VQBeTSchedulerConfig(num_warmup_steps=5, num_vqvae_training_steps=20), 60)
    assert curve[:20] == [1.0] * 20
    assert curve[20] == 0.0 and curve[25] == pytest.approx(1.0)


def test_cosine_decay_with_warmup_endpoints_and_rescaling():
    cfg = CosineDecayWithWarmupSchedulerConfig(num_warmup_steps=10, num_decay_steps=100, peak_lr=1e-4, decay_lr=1e-5)
    curve = lr_curve(cfg, 101)
    assert curve[0] == pytest.approx(1 / 11) and curve[9] == pytest.approx(1 / 11 + (10 / 11) * 0.9)
    # openpi measures decay progress from step 0, warmup included
    assert curve[10] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert curve[100] == pytest.approx(0.1)
    short = lr_curve(cfg, 50)  # a shorter run squeezes warmup (to 5 steps) and decay (to 50)
    assert short[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 50)) * 0.9 + 0.1)


def test_linear_and_constant():
    assert lr_curve(DiffuserSchedulerConfig(name="constant"), 5) == [1.0] * 5
    assert lr_curve(DiffuserSchedulerConfig(name="linear", num_warmup_steps=0), 4) == [1.0, 0.75, 0.5, 0.25]
