"""Loading MindSpore checkpoints: the model zoo's DDRNet-23 checkpoint layout (with optimizer state)
reproduces the zoo network's own forward pass; missing or mis-shaped parameters are named errors."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from model import create_model, load_checkpoint, load_zoo_checkpoint
from model.weights import WeightLoadError
from tests.support import zoo_reference
from tests.support.ddrnet_testutil import assert_logits_close, images, ms_mode, reference

IMAGE = 64  # the zoo network upsamples to a fixed image_size // 8; any multiple of 32 exercises it

# What a zoo training run saves beside the network (TrainOneStepWithLossScaleCell + Momentum).
TRAINING_EXTRAS = {
    "global_step": np.array([31250], np.int32),
    "learning_rate": np.array(0.05, np.float32),
    "scale_sense": np.array(4096.0, np.float32),
    "current_iterator_step": np.array(0, np.int32),
    "last_overflow_iterator_step": np.array(0, np.int32),
    "epoch_num": np.array([250], np.int32),
    "step_num": np.array([31250], np.int32),
}


def _save(path, entries: dict[str, np.ndarray]) -> None:
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in entries.items()], str(path))


@pytest.fixture(scope="module")
def zoo_net():
    with ms_mode(ms.PYNATIVE_MODE):
        return zoo_reference.randomize(zoo_reference.ZooDualResNet(image_size=IMAGE), seed=3)


@pytest.fixture(scope="module")
def zoo_ckpt(zoo_net, tmp_path_factory):
    """A checkpoint laid out like the published zoo file: network, Momentum moments, training state."""
    entries = {p.name: p.asnumpy() for p in zoo_net.get_parameters()}
    entries.update({f"moments.{p.name}": np.zeros(p.shape, np.float32) for p in zoo_net.trainable_params()})
    entries.update(TRAINING_EXTRAS)
    path = tmp_path_factory.mktemp("zoo") / "ddrnet23_zoo.ckpt"
    _save(path, entries)
    return path


def test_reference_port_has_the_published_layout(zoo_net):
    assert [(p.name, tuple(p.shape)) for p in zoo_net.get_parameters()] == reference(
        "ddrnet23_zoo_parameters.json"
    )


def test_zoo_checkpoint_reproduces_the_zoo_forward_pass(zoo_net, zoo_ckpt):
    net = create_model("ddrnet23", variant="zoo")
    ignored = load_zoo_checkpoint(net, zoo_ckpt)
    assert set(TRAINING_EXTRAS) <= set(ignored)
    assert any(n.startswith("moments.") for n in ignored)
    net.set_train(False)
    x = images((2, 3, IMAGE, IMAGE), seed=5)
    with ms_mode(ms.PYNATIVE_MODE):
        expected = zoo_net(ms.Tensor(x)).asnumpy()
        ours = net(ms.Tensor(x)).asnumpy()
    assert_logits_close(ours, expected, rel=1e-4)
    # The reference is sensitive to the zoo numerics: the authors' half-pixel bilinear differs.
    net.half_pixel_centers = True
    with ms_mode(ms.PYNATIVE_MODE):
        other = net(ms.Tensor(x)).asnumpy()
    assert np.abs(other - expected).max() > 1e-2 * np.abs(expected).max()


def test_create_model_loads_checkpoint_path(zoo_ckpt):
    net = create_model("ddrnet23", variant="zoo", checkpoint_path=str(zoo_ckpt))
    stored = ms.load_checkpoint(str(zoo_ckpt))
    np.testing.assert_array_equal(
        net.layer5_[0].bn3.moving_variance.asnumpy(), stored["layer5_.0.bn3.moving_variance"].asnumpy()
    )


@pytest.fixture(scope="module")
def slim_state():
    net = create_model("ddrnet23_slim", variant="zoo")
    rng = np.random.default_rng(0)
    return {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in net.get_parameters()}


def test_missing_parameter_is_named(slim_state, tmp_path):
    state = dict(slim_state)
    del state["layer4_.1.bn2.moving_mean"]
    _save(tmp_path / "m.ckpt", state)
    expected = r"1 network parameter\(s\) missing: layer4_\.1\.bn2\.moving_mean$"
    with pytest.raises(WeightLoadError, match=expected):
        load_checkpoint(create_model("ddrnet23_slim"), tmp_path / "m.ckpt")


def test_misshaped_parameter_is_named(slim_state, tmp_path):
    state = dict(slim_state, **{"compression4.0.weight": np.zeros((64, 256, 3, 3), np.float32)})
    _save(tmp_path / "s.ckpt", state)
    with pytest.raises(
        WeightLoadError, match=r"compression4\.0\.weight \(network \(64, 256, 1, 1\), .* \(64, 256, 3, 3\)\)"
    ):
        load_checkpoint(create_model("ddrnet23_slim"), tmp_path / "s.ckpt")


def test_values_land_in_the_named_parameters(slim_state, tmp_path):
    _save(tmp_path / "ok.ckpt", dict(slim_state, **TRAINING_EXTRAS))
    net = create_model("ddrnet23_slim")
    ignored = load_checkpoint(net, tmp_path / "ok.ckpt")
    assert sorted(ignored) == sorted(TRAINING_EXTRAS)
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), slim_state[p.name])


def test_exclude_and_non_strict_keep_initial_values(slim_state, tmp_path):
    state = {n: v for n, v in slim_state.items() if not n.startswith("linear.")}
    _save(tmp_path / "headless.ckpt", state)
    net = create_model("ddrnet23_slim", num_classes=10)
    before = net.linear.weight.asnumpy().copy()
    with pytest.raises(WeightLoadError, match=r"linear\.weight"):
        load_checkpoint(net, tmp_path / "headless.ckpt")
    load_checkpoint(net, tmp_path / "headless.ckpt", strict=False)
    np.testing.assert_array_equal(net.linear.weight.asnumpy(), before)
    _save(tmp_path / "full.ckpt", slim_state)  # a 1000-class head, excluded for a 10-class network
    load_checkpoint(net, tmp_path / "full.ckpt", exclude=["linear"])
    np.testing.assert_array_equal(net.conv1[0].weight.asnumpy(), slim_state["conv1.0.weight"])


def test_zoo_checkpoint_into_authors_network_is_refused(zoo_ckpt):
    with pytest.raises(WeightLoadError, match="variant='zoo'"):
        load_zoo_checkpoint(create_model("ddrnet23", variant="authors"), zoo_ckpt)
    with pytest.raises(WeightLoadError, match=r"missing: conv1\.0\.bias, conv1\.3\.bias"):
        load_checkpoint(create_model("ddrnet23", variant="authors"), zoo_ckpt)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04K\x01."])
def test_unreadable_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(WeightLoadError, match=r"cannot read checkpoint .*bad\.ckpt"):
        load_checkpoint(create_model("ddrnet23_slim"), path)
    with pytest.raises(WeightLoadError, match="checkpoint not found"):
        load_checkpoint(create_model("ddrnet23_slim"), tmp_path / "absent.ckpt")
