"""The train step on a tiny stand-in network: loss scaling (dynamic and fixed), overflow skipping,
global-norm clipping, the LR schedule position, weight-decay groups, each optimizer."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import validate_config
from training.device import prepare_cpu_env

prepare_cpu_env()


def _cfg(**kw):
    data = {"data_url": "/d", "epochs": 2, "warmup_length": 0, "amp_level": "O0", "num_classes": 3,
            "optimizer": "sgd", "momentum": 0.0, "use_nesterov": False, "weight_decay": 0.0,
            "clip_global_norm": False, "is_dynamic_loss_scale": True, "dynamic_scale_init": 1024.0,
            "dynamic_scale_window": 2, "lr_scheduler": "constant_lr", "base_lr": 0.256, "batch_size": 256}
    data.update(kw)
    return validate_config(data)


def _setup(cfg):
    import mindspore as ms
    from mindspore import nn

    from training.distributed import DistInfo, grad_reducer
    from training.optim import build_optimizer
    from training.schedules import build_lr_schedule
    from training.trainer import _StaticScaleState, build_loss_scaler, make_train_step

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    net = nn.SequentialCell([nn.Dense(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dense(8, 3)])
    net.set_train(True)
    lrs = build_lr_schedule(cfg, steps_per_epoch=5)
    opt = build_optimizer(cfg, net, lrs)
    scaler = build_loss_scaler(cfg)
    state = scaler if cfg.is_dynamic_loss_scale else _StaticScaleState(scaler)
    step = make_train_step(cfg, net, opt, scaler, grad_reducer(opt.parameters, DistInfo()))
    return net, opt, state, step, lrs


def _batch(bad=False):
    import mindspore as ms

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    if bad:
        x[0, 0] = np.inf
    return ms.Tensor(x), ms.Tensor(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]])


def _weights(net):
    return [p.asnumpy().copy() for p in net.trainable_params()]


def test_dynamic_loss_scale_skips_overflow_and_adapts():
    from training.optim import lr_position

    net, opt, scale, step, _ = _setup(_cfg())
    before = _weights(net)
    loss, finite = step(*_batch())
    assert bool(finite) and np.isfinite(float(loss.asnumpy()))
    assert lr_position(opt) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(net), strict=True))
    after_good = _weights(net)
    _, finite = step(*_batch(bad=True))
    assert not bool(finite)
    assert all(np.array_equal(a, b) for a, b in zip(after_good, _weights(net), strict=True))  # update skipped
    assert float(scale.scale_value.asnumpy()) == 512.0 and lr_position(opt) == 1
    step(*_batch())
    step(*_batch())  # two finite steps in a row (window 2): the scale grows again
    assert float(scale.scale_value.asnumpy()) == 1024.0 and lr_position(opt) == 3


def test_fixed_loss_scale_and_clipping_bound_the_update():
    net, _, scale, step, lrs = _setup(_cfg(is_dynamic_loss_scale=False, loss_scale=128.0,
                                             clip_global_norm=True, clip_global_norm_value=1e-3))
    before = _weights(net)
    step(*_batch())
    delta = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(before, _weights(net), strict=True)))
    assert float(scale.scale_value.asnumpy()) == 128.0
    assert lrs[0] == pytest.approx(0.256)  # base_lr 0.256 at a global batch of 256
    assert 0 < delta <= lrs[0] * 1e-3 * 1.001  # plain SGD: |update| = lr * |clipped gradient|


def test_weight_decay_spares_biases_and_norm_parameters():
    from mindspore import nn

    from training.optim import param_groups

    net = nn.SequentialCell([nn.Dense(4, 8), nn.BatchNorm1d(8), nn.Dense(8, 3)])
    decay, no_decay, order = param_groups(net, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert sorted(p.name for p in decay["params"]) == ["0.weight", "2.weight"]
    assert sorted(p.name for p in no_decay["params"]) == ["0.bias", "1.beta", "1.gamma", "2.bias"]
    assert len(order["order_params"]) == 6


@pytest.mark.parametrize("optimizer", ["momentum", "sgd", "adamw", "rmsprop"])
def test_every_optimizer_follows_the_schedule(optimizer):
    from training.optim import lr_position

    cfg = _cfg(optimizer=optimizer, momentum=0.9, use_nesterov=optimizer in ("momentum", "sgd"),
               weight_decay=1e-4, lr_scheduler="cosine_lr", warmup_length=1, base_lr=0.1, warmup_lr=0.0)
    _, opt, _, step, lrs = _setup(cfg)
    losses = [float(step(*_batch())[0].asnumpy()) for _ in range(4)]
    assert all(np.isfinite(losses)) and lr_position(opt) == 4
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.1)  # warmup over the first epoch of 5 steps
