"""Forward passes of the DDRNet cells: GRAPH mode equals PyNative at several input sizes, a dynamic batch
dimension (set_inputs and MindIR export), drop path only in training, gradients reach every parameter."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from model import create_model
from model.layers import DropPath
from tests.support.ddrnet_testutil import assert_logits_close, images, ms_mode


def _randomized(name: str, variant: str, seed: int = 0, **kwargs) -> nn.Cell:
    """A network with random BN statistics (so eval-mode BN is not the identity)."""
    net = create_model(name, variant=variant, **kwargs)
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(("moving_variance", "gamma")):
            p.set_data(Tensor((0.5 + rng.random(p.shape)).astype(np.float32)))
        elif p.name.endswith(("moving_mean", "beta")):
            p.set_data(Tensor((0.1 * rng.standard_normal(p.shape)).astype(np.float32)))
    net.set_train(False)
    return net


@pytest.mark.parametrize(("variant", "size"), [("authors", (128, 128)), ("zoo", (64, 160))])
def test_graph_mode_equals_pynative(variant, size):
    net = _randomized("ddrnet23_slim", variant)
    x = Tensor(images((2, 3, *size)))
    with ms_mode(ms.PYNATIVE_MODE):
        eager = net(x).asnumpy()
    with ms_mode(ms.GRAPH_MODE):
        graph = net(x).asnumpy()
    assert graph.shape == (2, 1000)
    assert_logits_close(graph, eager, rel=1e-5)


def test_graph_mode_at_224_with_a_dynamic_batch():
    """The zoo's 224 (other sizes: above), compiled once with a dynamic batch and run at 2 and 1."""
    net = _randomized("ddrnet23_slim", "zoo", num_classes=7)
    with ms_mode(ms.GRAPH_MODE):
        net.set_inputs(Tensor(shape=[None, 3, 224, 224], dtype=ms.float32))
        x = images((2, 3, 224, 224), seed=224)
        pair = net(Tensor(x)).asnumpy()
        single = net(Tensor(x[1:])).asnumpy()
    assert pair.shape == (2, 7) and np.isfinite(pair).all()
    assert_logits_close(single, pair[1:], rel=1e-5)


def test_dynamic_batch_mindir_export(tmp_path):
    net = _randomized("ddrnet23_slim", "authors", num_classes=10)
    x = images((3, 3, 64, 64))
    with ms_mode(ms.GRAPH_MODE):
        expected = net(Tensor(x)).asnumpy()
        ms.export(net, Tensor(shape=[None, 3, 64, 64], dtype=ms.float32), file_name=str(tmp_path / "m"),
                  file_format="MINDIR")
        graph = nn.GraphCell(ms.load(str(tmp_path / "m.mindir")))
        for batch in (1, 3):
            out = graph(Tensor(x[:batch]))
            assert_logits_close(out.asnumpy(), expected[:batch], rel=1e-5)


def test_drop_path_cell_drops_whole_samples_in_training_only():
    from model.counter_rng import keep_mask

    drop = DropPath(0.5, seed=11)
    x = Tensor(np.ones((64, 2, 3, 3), np.float32))
    with ms_mode(ms.PYNATIVE_MODE):
        drop.set_train(True)
        first, second = drop(x).asnumpy(), drop(x).asnumpy()
        drop.set_train(False)
        np.testing.assert_array_equal(drop(x).asnumpy(), x.asnumpy())
    assert int(drop.clock.asnumpy()) == 2  # one tick per training forward, none in eval
    for step, out in enumerate((first, second)):
        per_sample = out.reshape(64, -1)
        assert set(np.unique(per_sample)) == {0.0, 2.0}  # kept samples scaled by 1 / (1 - rate)
        assert (per_sample == per_sample[:, :1]).all()  # a whole sample is dropped or kept
        assert 10 < (per_sample[:, 0] == 0).sum() < 54
        # the masks are the counter-based hash of (seed, step, sample): known without running the cell
        np.testing.assert_array_equal(per_sample[:, 0] > 0, keep_mask(11, step, 64, 0.5))
    assert not np.array_equal(first, second)
    # a cell whose clock is set to a step draws that step's mask again (what resume relies on)
    drop.clock.set_data(Tensor(1, ms.int32))
    with ms_mode(ms.PYNATIVE_MODE):
        drop.set_train(True)
        np.testing.assert_array_equal(drop(x).asnumpy(), second)
    assert not hasattr(DropPath(0.0), "clock")  # no drop-path, no state: eval and export nets


def test_drop_path_only_in_training():
    net = _randomized("ddrnet23_slim", "zoo", num_classes=10, drop_path_rate=0.5)
    x = Tensor(images((2, 3, 64, 64)))
    with ms_mode(ms.PYNATIVE_MODE):
        ms.set_seed(1)
        net.set_train(True)
        train_a, train_b = net(x).asnumpy(), net(x).asnumpy()
        net.set_train(False)
        eval_a, eval_b = net(x).asnumpy(), net(x).asnumpy()
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(eval_a, eval_b)


def test_gradients_reach_every_parameter():
    net = create_model("ddrnet23_slim", variant="authors", num_classes=5)
    net.set_train(True)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    x, y = Tensor(images((2, 3, 64, 64))), Tensor(np.array([1, 3], np.int32))

    def forward(inputs, labels):
        return loss_fn(net(inputs), labels)

    with ms_mode(ms.PYNATIVE_MODE):
        grad_fn = ms.value_and_grad(forward, None, net.trainable_params())
        loss, grads = grad_fn(x, y)
    assert np.isfinite(loss.asnumpy())
    params = net.trainable_params()
    dead = [p.name for p, g in zip(params, grads, strict=True) if not np.abs(g.asnumpy()).max() > 0]
    assert not dead, f"no gradient for {dead}"


def test_amp_o2_training_forward_with_drop_path():
    """float16 convs + float32 BN (the zoo recipe's AMP O2): the resize matrices and the drop-path mask
    follow the float16 activations."""
    net = ms.amp.auto_mixed_precision(create_model("ddrnet23_slim", num_classes=10, drop_path_rate=0.1), "O2")
    net.set_train(True)
    with ms_mode(ms.GRAPH_MODE):
        out = net(Tensor(images((2, 3, 64, 64)))).asnumpy()
    assert out.shape == (2, 10) and np.isfinite(out).all()


@pytest.mark.parametrize("mode", ["zoo", "branch"])
def test_each_drop_path_mode_drops_what_it_says(mode):
    """Against each formulation written out: zoo ``relu(branch + m * shortcut / keep)`` (the model
    zoo's ``out += self.drop_path(residual)``), branch ``relu(m * branch / keep + shortcut)``, with
    m in {0, 1} per sample and both outcomes seen."""
    from mindspore import ops

    from model.layers import BasicBlock

    ms.set_seed(5)
    block = BasicBlock(8, 8, drop_path=0.5, drop_path_mode=mode)
    x = Tensor(np.repeat(images((1, 8, 8, 8)), 64, axis=0))
    with ms_mode(ms.PYNATIVE_MODE):
        block.set_train(False)  # BatchNorm on its running statistics: the sample's own numbers only
        branch = block.bn2(block.conv2(ops.relu(block.bn1(block.conv1(x))))).asnumpy()
        shortcut = x.asnumpy()
        block.drop_path.set_train(True)
        out = block(x).asnumpy()
    keep = 0.5
    if mode == "zoo":
        dropped, kept = np.maximum(branch, 0), np.maximum(branch + shortcut / keep, 0)
    else:
        dropped, kept = np.maximum(shortcut, 0), np.maximum(branch / keep + shortcut, 0)
    is_dropped = np.array([np.allclose(o, d, atol=1e-5) for o, d in zip(out, dropped, strict=True)])
    is_kept = np.array([np.allclose(o, k, atol=1e-5) for o, k in zip(out, kept, strict=True)])
    assert (is_dropped | is_kept).all()
    assert 5 < is_dropped.sum() < 59
