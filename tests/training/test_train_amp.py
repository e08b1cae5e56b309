"""AMP levels O0–O3 with and without float32 BatchNorm train on MindSpore's CPU kernels, keeping
float32 parameters under their own names (what checkpoints and export rely on)."""

from __future__ import annotations

import numpy as np
import pytest

from training.device import prepare_cpu_env

prepare_cpu_env()



@pytest.mark.parametrize(("level", "keep_bn"), [("O0", True), ("O1", True), ("O1", False), ("O2", True),
                                                ("O2", False), ("O3", True), ("O3", False)])
def test_amp_level_trains_one_step(level, keep_bn, tmp_path, monkeypatch):
    import mindspore as ms
    from mindspore import nn

    from model import create_model
    from training.device import apply_amp
    from training.loss import SoftTargetCrossEntropy

    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    net = create_model("ddrnet23_slim", num_classes=4)
    names = [p.name for p in net.get_parameters()]
    amp_net = apply_amp(net, level, keep_bn)
    amp_net.set_train(True)
    opt = nn.Momentum(net.trainable_params(), 0.01, 0.9)
    loss_fn = SoftTargetCrossEntropy()

    def forward(x, t):
        return loss_fn(amp_net(x), t)

    grad = ms.value_and_grad(forward, None, opt.parameters)
    x = ms.Tensor(np.random.default_rng(0).random((2, 3, 64, 64), np.float32))
    t = ms.Tensor(np.eye(4, dtype=np.float32)[[0, 3]])
    before = net.trainable_params()[0].asnumpy().copy()
    loss, grads = grad(x, t)
    opt(grads)
    assert np.isfinite(float(loss.asnumpy()))
    assert not np.array_equal(before, net.trainable_params()[0].asnumpy())
    assert [p.name for p in amp_net.get_parameters()] == names
    assert all(p.dtype == ms.float32 for p in net.trainable_params())
    assert not list(tmp_path.iterdir())
