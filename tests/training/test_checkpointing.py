"""Checkpoints: atomic writes, keep-last-K and best, partial leftovers, resume state round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest

from training.checkpointing import (
    CheckpointError,
    CheckpointManager,
    TrainState,
    read_checkpoint,
    restore,
    save_checkpoint,
)


def _net_opt():
    import mindspore as ms
    from mindspore import nn

    ms.set_seed(1)
    net = nn.SequentialCell([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 8 * 8, 2)])
    opt = nn.Momentum(net.trainable_params(), ms.Tensor(np.float32(0.1)), 0.9)
    scaler = ms.amp.DynamicLossScaler(1024, 2, 5)
    return net, opt, scaler


def _train_a_step(net, opt):
    import mindspore as ms

    def fwd(x):
        return net(x).sum()

    grad = ms.value_and_grad(fwd, None, opt.parameters)
    _, g = grad(ms.Tensor(np.ones((2, 3, 8, 8), np.float32)))
    opt(g)


def test_round_trip_restores_weights_optimizer_and_scale(tmp_path):
    import mindspore as ms

    net, opt, scaler = _net_opt()
    _train_a_step(net, opt)
    scaler.scale_value.set_data(ms.Tensor(256.0, ms.float32))
    state = TrainState(epoch=3, step=42, step_in_epoch=0, best_top1=71.5, best_epoch=2, steps_per_epoch=14)
    path = save_checkpoint(tmp_path / "c.ckpt", net, opt, scaler, state)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert not list(tmp_path.glob(".partial-*"))
    params, read_state = read_checkpoint(path)
    assert read_state == state
    assert any(name.startswith("moments.") for name in params)

    net2, opt2, scaler2 = _net_opt()
    got = restore(path, net2, opt2, scaler2)
    assert got.step == 42 and got.best_top1 == 71.5
    for a, b in zip(net.get_parameters(), net2.get_parameters(), strict=True):
        assert np.array_equal(a.asnumpy(), b.asnumpy()), a.name
    for a, b in zip(opt.moments, opt2.moments, strict=True):
        assert np.array_equal(a.asnumpy(), b.asnumpy())
    assert float(scaler2.scale_value.asnumpy()) == 256.0

    # the network's own names: model.load_checkpoint-style readers see plain parameter names
    assert "0.weight" in params and "3.weight" in params


def test_unreadable_and_foreign_checkpoints_are_clear_errors(tmp_path):
    net, opt, scaler = _net_opt()
    path = save_checkpoint(tmp_path / "c.ckpt", net, opt, scaler, TrainState())
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*torn\.ckpt"):
        restore(torn, net, opt, scaler)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    import mindspore as ms

    weights_only = tmp_path / "weights.ckpt"
    ms.save_checkpoint(net, str(weights_only))
    with pytest.raises(CheckpointError, match="holds no training state"):
        restore(weights_only, net, opt, scaler)
    from mindspore import nn

    other = nn.SequentialCell([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 8 * 8, 5)])
    other_opt = nn.Momentum(other.trainable_params(), 0.1, 0.9)
    with pytest.raises(CheckpointError, match=r"3\.weight has shape"):
        restore(path, other, other_opt, scaler)


def test_manager_keeps_last_k_best_and_latest(tmp_path):
    net, opt, scaler = _net_opt()
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    (tmp_path / "ck").mkdir()
    leftover = tmp_path / "ck" / ".partial-999-e0009-s00000090.ckpt"
    leftover.write_bytes(b"half a file")
    mgr.clean_partials()
    assert not leftover.exists()
    for epoch in range(1, 5):
        mgr.save(net, opt, scaler, TrainState(epoch=epoch, step=10 * epoch), is_best=epoch == 2)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["best.ckpt", "e0003-s00000030.ckpt", "e0004-s00000040.ckpt", "latest.ckpt"]
    assert read_checkpoint(tmp_path / "ck" / "best.ckpt")[1].epoch == 2  # survives its periodic file
    assert read_checkpoint(tmp_path / "ck" / "latest.ckpt")[1].epoch == 4
    assert [p.name for p in mgr.resume_candidates()] == ["e0004-s00000040.ckpt", "e0003-s00000030.ckpt"]


def _scheduled_opt(net, steps: int):
    import mindspore as ms
    from mindspore import nn

    lrs = np.linspace(0.1, 0.01, steps).astype(np.float32)
    return nn.Momentum(net.trainable_params(), ms.Tensor(lrs), 0.9)


def test_the_lr_schedule_is_not_frozen_in_a_checkpoint(tmp_path):
    """A run that resumes with more epochs has a longer schedule: the checkpoint must not pin it."""
    import mindspore as ms

    net, _, scaler = _net_opt()
    opt = _scheduled_opt(net, 3)
    _train_a_step(net, opt)
    state = TrainState(step=1, lr_settings={"epochs": 1})
    path = save_checkpoint(tmp_path / "c.ckpt", net, opt, scaler, state)
    params, state = read_checkpoint(path)
    assert "learning_rate" not in params and state.lr_settings == {"epochs": 1}
    net2, _, scaler2 = _net_opt()
    longer = _scheduled_opt(net2, 6)
    restore(path, net2, longer, scaler2)
    assert int(longer.global_step.asnumpy()[0]) == 1  # the position is kept; the values are the run's own
    (values,) = longer.learning_rate.get_parameters()
    assert np.allclose(values.asnumpy(), np.linspace(0.1, 0.01, 6))

    # A checkpoint of the old kind (the whole schedule saved, no recorded settings) still resumes.
    old = tmp_path / "old.ckpt"
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    names = {e["name"] for e in entries}
    entries += [{"name": p.name, "data": p} for p in opt.get_parameters() if p.name not in names]
    entries += [{"name": "loss_scale.scale_value", "data": scaler.scale_value},
                {"name": "loss_scale.counter", "data": scaler.counter}]
    assert any(e["name"] == "learning_rate" for e in entries)
    old_state = '{"epoch": 0, "step": 1, "world_size": 1}'
    ms.save_checkpoint(entries, str(old), append_dict={"train_state": old_state})
    net3, _, scaler3 = _net_opt()
    state = restore(old, net3, _scheduled_opt(net3, 6), scaler3, arch="x", num_classes=2)
    assert state.step == 1 and state.lr_settings == {} and state.arch == ""


def test_a_checkpoint_of_another_model_names_the_real_mismatch(tmp_path):
    from mindspore import nn

    net, opt, scaler = _net_opt()
    path = save_checkpoint(tmp_path / "c.ckpt", net, opt, scaler,
                           TrainState(arch="ddrnet23", num_classes=2))
    with pytest.raises(CheckpointError, match="written by a ddrnet23 run with 2 classes; this run is "
                                              "ddrnet23_slim with 2 classes"):
        restore(path, net, opt, scaler, arch="ddrnet23_slim", num_classes=2)
    # an older checkpoint without the recorded arch: the classifier's shape says it
    old = save_checkpoint(tmp_path / "o.ckpt", net, opt, scaler, TrainState())
    other = nn.SequentialCell([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 8 * 8, 5)])
    with pytest.raises(CheckpointError, match="the checkpoint's classifier has 2 classes, this run 5"):
        restore(old, other, nn.Momentum(other.trainable_params(), 0.1, 0.9), scaler, arch="x", num_classes=5)


def test_drop_path_counters_travel_with_the_weights_and_older_checkpoints_get_their_step(tmp_path):
    import mindspore as ms
    from mindspore import nn

    from model.layers import DropPath

    def net_with_drop_path():
        ms.set_seed(1)
        return nn.SequentialCell([nn.Dense(4, 4), DropPath(0.5, seed=3)])

    net = net_with_drop_path()
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    scaler = ms.amp.DynamicLossScaler(1024, 2, 5)
    net[1].clock.set_data(ms.Tensor(7, ms.int32))
    path = save_checkpoint(tmp_path / "c.ckpt", net, opt, scaler, TrainState(step=7))
    assert int(read_checkpoint(path)[0]["1.clock"].asnumpy()) == 7
    again = net_with_drop_path()
    restore(path, again, nn.Momentum(again.trainable_params(), 0.1, 0.9), scaler)
    assert int(again[1].clock.asnumpy()) == 7
    # written before the counters existed: every drop-path cell ticked once per step
    old = tmp_path / "old.ckpt"
    entries = [{"name": p.name, "data": p} for p in net.get_parameters() if not p.name.endswith("clock")]
    entries += [{"name": p.name, "data": p} for p in opt.get_parameters()
                if p.name not in {e["name"] for e in entries} and p.name != "learning_rate"]
    entries += [{"name": "loss_scale.scale_value", "data": scaler.scale_value},
                {"name": "loss_scale.counter", "data": scaler.counter}]
    ms.save_checkpoint(entries, str(old), append_dict={"train_state": '{"step": 5}'})
    third = net_with_drop_path()
    restore(old, third, nn.Momentum(third.trainable_params(), 0.1, 0.9), scaler)
    assert int(third[1].clock.asnumpy()) == 5
