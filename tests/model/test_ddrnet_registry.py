"""Registry, parameter layout and parameter counts of the DDRNet classifiers (no forward passes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model import create_model, list_models
from model.convert import ConvertError, map_authors_state_dict
from model.ddrnet import drop_path_schedule
from model.preprocess_config import resolve_preprocess
from tests.support.ddrnet_testutil import reference

# Trainable parameters of the authors' networks (stem conv bias included); the zoo variant has no
# stem bias: 2 * planes fewer.
AUTHORS_COUNTS = {"ddrnet23": 28_216_616, "ddrnet23_slim": 7_574_664, "ddrnet39": 40_130_344}
STEM_BIAS = {"ddrnet23": 128, "ddrnet23_slim": 64, "ddrnet39": 128}


@pytest.fixture(scope="module")
def nets():
    return {(name, v): create_model(name, variant=v) for name in AUTHORS_COUNTS for v in ("zoo", "authors")}


def _layout(net) -> list[tuple[str, tuple[int, ...]]]:
    return [(p.name, tuple(p.shape)) for p in net.get_parameters()]


def test_list_models():
    assert list_models() == ["ddrnet23", "ddrnet23_slim", "ddrnet39"]


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*ddrnet23, ddrnet23_slim, ddrnet39"):
        create_model("resnet50")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "timm"}, "unknown weight variant 'timm'; known variants: zoo, authors"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be in"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("ddrnet23_slim", **kwargs)


@pytest.mark.parametrize("name", ["ddrnet23", "ddrnet23_slim", "ddrnet39"])
@pytest.mark.parametrize("variant", ["zoo", "authors"])
def test_trainable_parameter_counts(nets, name, variant):
    net = nets[(name, variant)]
    count = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    expected = AUTHORS_COUNTS[name] - (STEM_BIAS[name] if variant == "zoo" else 0)
    assert count == expected
    assert net.variant == variant and net.arch == name


def test_zoo_layout_equals_the_published_checkpoint(nets):
    assert _layout(nets[("ddrnet23", "zoo")]) == reference("ddrnet23_zoo_parameters.json")


@pytest.mark.parametrize("name", ["ddrnet23", "ddrnet23_slim", "ddrnet39"])
def test_authors_state_dict_maps_one_to_one(nets, name):
    net = nets[(name, "authors")]
    torch_layout = reference(f"{name}_authors_pytorch_state_dict.json")
    state = {n: np.zeros(s, np.float32) for n, s in torch_layout}
    targets = dict(_layout(net))
    mapped = map_authors_state_dict(state, targets)
    assert list(mapped) == list(targets)
    # 1:1: every torch tensor but the BN step counters became exactly one network parameter.
    assert len(mapped) == sum(not n.endswith("num_batches_tracked") for n, _ in torch_layout)


def test_authors_layout_rejects_another_architecture(nets):
    state = {n: np.zeros(s, np.float32) for n, s in reference("ddrnet39_authors_pytorch_state_dict.json")}
    expected = r"missing: layer3\.0\.conv1\.weight, .*does not have: layer1\.2\.conv1\.weight"
    with pytest.raises(ConvertError, match=expected):
        map_authors_state_dict(state, dict(_layout(nets[("ddrnet23", "authors")])))


def test_num_classes_sets_the_head():
    net = create_model("ddrnet23_slim", num_classes=10)
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert shapes["linear.weight"] == (10, 1024) and shapes["linear.bias"] == (10,)


def test_bn_settings_follow_each_source(nets):
    zoo, authors = nets[("ddrnet23_slim", "zoo")], nets[("ddrnet23_slim", "authors")]

    def api_momentum(bn):  # nn.BatchNorm2d keeps 1 - momentum (the op's convention) as .momentum
        return 1.0 - bn.momentum

    assert api_momentum(zoo.layer5[0].bn3) == pytest.approx(0.1)  # the zoo's Bottleneck bn3
    assert api_momentum(authors.layer5[0].bn3) == pytest.approx(0.9)  # = PyTorch momentum 0.1
    assert api_momentum(zoo.layer1[0].bn1) == pytest.approx(0.9)
    assert zoo.layer1[0].bn1.eps == pytest.approx(1e-5)


def test_branch_drop_path_schedule_is_linear_over_blocks():
    rates = drop_path_schedule((3, 4, 6, 3), 0.2, "branch")
    low = [rates[k] for k in ("layer1", "layer2", "layer3", "layer4", "layer5")]
    assert [len(s) for s in low] == [3, 4, 6, 3, 1]
    np.testing.assert_allclose([r for stage in low for r in stage], np.linspace(0.0, 0.2, 17))
    assert (rates["layer3_"], rates["layer4_"], rates["layer5_"]) == (low[2], low[3], low[4])
    net = create_model("ddrnet23_slim", drop_path_rate=0.1, drop_path_mode="branch")
    assert net.layer1[0].drop_path.rate == 0.0 and not net.layer1[0].drop_shortcut
    assert net.layer5[0].drop_path.rate == pytest.approx(0.1)
    assert net.layer3_[1].drop_path.rate == net.layer3[1].drop_path.rate > 0


def _zoo_reference_rates(layers, rate):
    """The model zoo's ``DualResNet.__init__`` (research/cv/DDRNet/src/models/ddrnet23.py), its slicing
    restated: ``self.drop_path_rate = np.linspace(0, drop_path_rate, sum(layers))``, layerK takes
    ``[sum(layers[:K-1]):sum(layers[:K])]``, layer3_ the slice of layer2, layer4_ the slice of layer3,
    layer5 and layer5_ ``[drop_path_rate]``; ``_make_layer`` reads ``drop_path_rate[i]`` per block."""
    dpr = np.linspace(0, rate, sum(layers))
    cut = [sum(layers[:k]) for k in range(5)]
    return {"layer1": list(dpr[cut[0]:cut[1]]), "layer2": list(dpr[cut[1]:cut[2]]),
            "layer3": list(dpr[cut[2]:cut[3]]), "layer4": list(dpr[cut[3]:cut[4]]),
            "layer3_": list(dpr[cut[1]:cut[2]][:2]), "layer4_": list(dpr[cut[2]:cut[3]][:2]),
            "layer5": [rate], "layer5_": [rate]}


def test_zoo_drop_path_schedule_is_the_model_zoos():
    ours = drop_path_schedule((2, 2, 2, 2), 0.1, "zoo")
    ref = _zoo_reference_rates((2, 2, 2, 2), 0.1)
    assert ours.keys() == ref.keys()
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], err_msg=key)
    # the built network carries them, and the zoo mode drops the shortcut
    net = create_model("ddrnet23", drop_path_rate=0.1)
    assert net.drop_path_mode == "zoo" and net.layer1[0].drop_shortcut
    built = {key: [b.drop_path.rate for b in getattr(net, key)] for key in ref}
    for key in ref:
        np.testing.assert_allclose(built[key], ref[key], err_msg=key)
    # DDRNet-39: the high branch is deeper than the stage it borrows from and continues into the next
    deep = drop_path_schedule((3, 4, 6, 3), 0.2, "zoo")
    flat = np.linspace(0, 0.2, 16)
    np.testing.assert_allclose(deep["layer3_"], flat[3:9])
    np.testing.assert_allclose(deep["layer4_"], flat[7:10])
    net39 = create_model("ddrnet39", drop_path_rate=0.2)
    got = [b.drop_path.rate for b in net39.layer3_1_] + [b.drop_path.rate for b in net39.layer3_2_]
    np.testing.assert_allclose(got, flat[3:9])
    with pytest.raises(ValueError, match="drop_path_mode must be one of"):
        create_model("ddrnet23_slim", drop_path_mode="shortcut")


def test_default_preprocessing_needs_no_mindspore():
    code = (
        "import sys; from model.preprocess_config import resolve_preprocess as r; "
        "c = r('ddrnet23'); assert 'mindspore' not in sys.modules, 'mindspore imported'; print(c)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert resolve_preprocess("ddrnet39").to_dict() == {
        "image_size": 224,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "resize_mode": "squash",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "apply_exif_orientation": False,
    }
    # an architecture this build does not know takes the zoo defaults; explicit values win
    assert resolve_preprocess("x", image_size=64).image_size == 64


def test_fc_named_classifier_maps_to_linear(nets):
    layout = reference("ddrnet23_slim_authors_pytorch_state_dict.json")
    state = {n.replace("linear.", "fc."): np.full(s, 0.5, np.float32) for n, s in layout}
    mapped = map_authors_state_dict(state, dict(_layout(nets[("ddrnet23_slim", "authors")])))
    assert mapped["linear.weight"].shape == (1000, 1024) and "fc.weight" not in mapped
