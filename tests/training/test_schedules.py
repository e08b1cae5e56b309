"""LR schedules: warmup, cosine, multistep and constant values at known steps; batch scaling."""

from __future__ import annotations

import itertools
import math

import pytest

from training.config import validate_config
from training.schedules import build_lr_schedule, lr_at, lr_scale

COMMON = {"steps_per_epoch": 10, "epochs": 12, "base_lr": 0.4, "warmup_lr": 0.0, "min_lr": 0.01,
          "warmup_length": 2, "lr_adjust": 4}


def test_linear_warmup_per_step():
    for scheduler in ("cosine_lr", "multistep_lr", "constant_lr"):
        assert lr_at(0, scheduler=scheduler, **COMMON) == 0.0
        assert lr_at(5, scheduler=scheduler, **COMMON) == pytest.approx(0.1)  # epoch 0.5 of 2
        assert lr_at(15, scheduler=scheduler, **COMMON) == pytest.approx(0.3)


def test_cosine_after_warmup():
    assert lr_at(20, scheduler="cosine_lr", **COMMON) == pytest.approx(0.4)  # warmup just ended
    assert lr_at(70, scheduler="cosine_lr", **COMMON) == pytest.approx(0.01 + 0.5 * 0.39)  # half way
    quarter = 0.01 + 0.5 * (1 + math.cos(math.pi * 0.25)) * 0.39
    assert lr_at(45, scheduler="cosine_lr", **COMMON) == pytest.approx(quarter)
    assert lr_at(120, scheduler="cosine_lr", **COMMON) == pytest.approx(0.01)


def test_multistep_and_constant():
    assert lr_at(39, scheduler="multistep_lr", **COMMON) == pytest.approx(0.4)
    assert lr_at(40, scheduler="multistep_lr", **COMMON) == pytest.approx(0.04)
    assert lr_at(85, scheduler="multistep_lr", **COMMON) == pytest.approx(0.004)
    assert lr_at(119, scheduler="constant_lr", **COMMON) == pytest.approx(0.4)


def test_schedule_from_config_is_scaled_by_global_batch():
    cfg = validate_config({"data_url": "/d", "epochs": 3, "warmup_length": 1, "base_lr": 0.1,
                           "warmup_lr": 0.0, "min_lr": 0.0, "batch_size": 64, "lr_scheduler": "cosine_lr"})
    lrs = build_lr_schedule(cfg, steps_per_epoch=4, world_size=2)
    assert lr_scale(128) == 0.5
    assert len(lrs) == 12
    assert lrs[0] == 0.0
    assert lrs[2] == pytest.approx(0.05 * 0.5)
    assert lrs[4] == pytest.approx(0.05)  # peak = 0.1 * 128 / 256
    assert lrs[8] == pytest.approx(0.025)  # half way through the cosine
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
