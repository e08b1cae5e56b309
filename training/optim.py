"""Optimizer from the config: momentum (Nesterov), SGD, AdamW or RMSProp, with weight decay on
weights only.

Parameters with one dimension or fewer (BatchNorm gamma/beta, biases) get no weight decay, as in the zoo
and timm. The learning rate is MindSpore's dynamic LR: the whole per-step schedule
(``training.schedules``), computed from the run's config, is handed to the optimizer, which indexes it
with its ``global_step`` Parameter. That counter is saved in every checkpoint, so a resumed run
continues at the same LR position; the schedule itself is not (``training.checkpointing``), so a resumed
run follows its own config's schedule. It advances with every applied update; a step skipped for a
loss-scale overflow does not advance it (MindSpore's own behaviour). Setting a scalar LR Parameter from
Python before each step is not an option: in MindSpore 2.10 PyNative an optimizer that has run once
keeps using the LR value it first saw (``set_data``/``assign`` on ``learning_rate`` have no effect;
measured)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn


def param_groups(net: nn.Cell, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights and undecayed (ndim <= 1) parameters, keeping the network order."""
    params = net.trainable_params()
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    groups.append({"order_params": params})
    return groups


def build_optimizer(cfg, net: nn.Cell, lr_schedule: np.ndarray) -> nn.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``net``'s trainable parameters, following the
    per-step ``lr_schedule`` (at least 2 entries)."""
    groups = param_groups(net, cfg.weight_decay)
    schedule = np.asarray(lr_schedule, dtype=np.float32)
    if schedule.size < 2:  # a 1-element Tensor would be read as a constant LR
        schedule = np.repeat(schedule, 2)
    lr = ms.Tensor(schedule)
    if cfg.optimizer == "momentum":
        return nn.Momentum(groups, learning_rate=lr, momentum=cfg.momentum, use_nesterov=cfg.use_nesterov)
    if cfg.optimizer == "sgd":
        if cfg.use_nesterov and cfg.momentum <= 0:
            raise ValueError("use_nesterov needs momentum > 0 for the sgd optimizer")
        return nn.SGD(groups, learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.use_nesterov)
    if cfg.optimizer == "adamw":
        return nn.AdamWeightDecay(groups, learning_rate=lr, beta1=cfg.beta[0], beta2=cfg.beta[1],
                                  eps=cfg.opt_eps)
    if cfg.optimizer == "rmsprop":
        return nn.RMSProp(groups, learning_rate=lr, decay=cfg.decay, momentum=cfg.momentum,
                          epsilon=cfg.opt_eps)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_position(optimizer: nn.Optimizer) -> int:
    """Updates applied so far: the index of the LR the next update uses."""
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


def learning_rate_params(optimizer: nn.Optimizer) -> list[ms.Parameter]:
    """The Parameters behind ``optimizer.learning_rate``: a Parameter, a tuple of them (group LRs), or
    the cell MindSpore wraps a per-step schedule in (``_IteratorLearningRate``, holding one)."""
    found: list = []
    pending = [getattr(optimizer, "learning_rate", None)]
    while pending:
        item = pending.pop()
        if item is None:
            continue
        if isinstance(item, nn.Cell):
            found.extend(item.get_parameters())
        elif isinstance(item, (list, tuple, ms.ParameterTuple)):
            pending.extend(item)
        elif isinstance(item, ms.Parameter):
            found.append(item)
    return found


def current_lr(optimizer: nn.Optimizer) -> float:
    """The LR the optimizer's next update uses, read from the optimizer itself (its schedule at its
    ``global_step``), so what is logged is what runs."""
    (values,) = learning_rate_params(optimizer)[:1]
    if values.ndim == 0:
        return float(values.asnumpy())
    position = min(lr_position(optimizer), values.shape[0] - 1)
    return float(values[position].asnumpy())
