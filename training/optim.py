"""Optimizer from the config: momentum (Nesterov), SGD, AdamW or RMSProp, with weight decay on
weights only.

Parameters with one dimension or fewer (BatchNorm gamma/beta, biases) get no weight decay, as in the
zoo and timm. The learning rate is a single ``learning_rate`` Parameter of the optimizer that the
trainer sets before every step from ``training.schedules`` (:func:`set_lr`), so the LR follows the
step counter exactly — also across overflow-skipped steps and resumes.
"""

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


def build_optimizer(cfg, net: nn.Cell, initial_lr: float) -> nn.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``net``'s trainable parameters."""
    groups = param_groups(net, cfg.weight_decay)
    lr = ms.Tensor(np.float32(initial_lr))
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


def set_lr(optimizer: nn.Optimizer, lr: float) -> None:
    """Set the optimizer's (single, shared) learning rate for the next step."""
    optimizer.learning_rate.set_data(ms.Tensor(np.float32(lr)))


def get_lr(optimizer: nn.Optimizer) -> float:
    return float(optimizer.learning_rate.asnumpy())
