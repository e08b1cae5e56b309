"""Learning-rate schedules computed per step: linear warmup, then cosine, multistep or constant.

As the zoo computes them: the schedule is a function of the fractional epoch ``step / steps_per_epoch``;
warmup goes linearly from ``warmup_lr`` to ``base_lr`` over ``warmup_length`` epochs; cosine decays
from ``base_lr`` to ``min_lr`` over the remaining epochs; multistep multiplies by 0.1 every
``lr_adjust`` epochs (counted from 0); constant stays at ``base_lr``. ``base_lr``, ``warmup_lr`` and
``min_lr`` are first scaled by ``global_batch / 256`` (:func:`lr_scale`).

A run computes its schedule from its own config and follows it by the optimizer's ``global_step``;
checkpoints record the settings (:func:`lr_settings`), not the values, so a resumed run with more
``epochs`` recomputes the cosine from where it stands, and a changed setting is reported
(:func:`lr_changes`).
"""

from __future__ import annotations

import math

import numpy as np

LR_REFERENCE_BATCH = 256
MULTISTEP_GAMMA = 0.1


def lr_scale(global_batch: int) -> float:
    """Linear scaling rule: the recipe's LRs are for a global batch of 256."""
    return global_batch / LR_REFERENCE_BATCH


def lr_at(step: int, *, steps_per_epoch: int, epochs: int, scheduler: str, base_lr: float, warmup_lr: float,
          min_lr: float, warmup_length: int, lr_adjust: int) -> float:
    """LR for ``step`` (0-based) with already-scaled ``base_lr``/``warmup_lr``/``min_lr``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    epoch = step / steps_per_epoch
    if epoch < warmup_length:
        return warmup_lr + epoch / warmup_length * (base_lr - warmup_lr)
    if scheduler == "cosine_lr":
        span = epochs - warmup_length
        progress = min(1.0, (epoch - warmup_length) / span) if span > 0 else 1.0
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)
    if scheduler == "multistep_lr":
        return base_lr * MULTISTEP_GAMMA ** int(epoch // lr_adjust)
    if scheduler == "constant_lr":
        return base_lr
    raise ValueError(f"unknown lr_scheduler {scheduler!r}")


def build_lr_schedule(cfg, steps_per_epoch: int, world_size: int = 1) -> np.ndarray:
    """Per-step LRs (float32, length ``epochs * steps_per_epoch``) for a :class:`TrainConfig`."""
    scale = lr_scale(cfg.batch_size * world_size)
    total = cfg.epochs * steps_per_epoch
    values = [
        lr_at(step, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, scheduler=cfg.lr_scheduler,
              base_lr=cfg.base_lr * scale, warmup_lr=cfg.warmup_lr * scale, min_lr=cfg.min_lr * scale,
              warmup_length=cfg.warmup_length, lr_adjust=cfg.lr_adjust)
        for step in range(total)
    ]
    return np.asarray(values, dtype=np.float32)


#: The config keys that define a run's LR schedule (with the global batch that scales it).
LR_KEYS = ("lr_scheduler", "base_lr", "warmup_lr", "min_lr", "warmup_length", "lr_adjust", "epochs")


def lr_settings(cfg, world_size: int = 1) -> dict:
    """What the schedule of ``cfg`` on ``world_size`` workers is computed from (saved in checkpoints)."""
    return {**{key: getattr(cfg, key) for key in LR_KEYS}, "global_batch": cfg.batch_size * world_size}


def lr_changes(saved: dict, current: dict) -> list[str]:
    """``key old → new`` for each schedule setting that differs (empty when nothing was recorded)."""
    return [f"{key} {saved[key]} → {current[key]}" for key in current
            if key in saved and saved[key] != current[key]]


def lr_value(settings: dict, step: int, steps_per_epoch: int) -> float:
    """The LR ``settings`` (as :func:`lr_settings` returns) give at ``step``."""
    scale = lr_scale(settings["global_batch"])
    return lr_at(step, steps_per_epoch=steps_per_epoch, epochs=settings["epochs"],
                 scheduler=settings["lr_scheduler"], base_lr=settings["base_lr"] * scale,
                 warmup_lr=settings["warmup_lr"] * scale, min_lr=settings["min_lr"] * scale,
                 warmup_length=settings["warmup_length"], lr_adjust=settings["lr_adjust"])
