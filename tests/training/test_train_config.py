"""Config validation: the shipped configs load; bad keys, types and ranges are errors naming the key."""

from __future__ import annotations

import pytest
import yaml

from tests.support.train_testutil import CONFIGS
from training.config import ConfigError, load_config, parse_overrides, validate_config

RECIPE_KEYS = [
    "arch", "data_url", "set", "num_classes", "mix_up", "cutmix", "color_jitter", "auto_augment",
    "interpolation", "re_mode", "re_count", "mixup_prob", "switch_prob", "mixup_mode", "mixup_off_epoch",
    "image_size", "crop_pct", "optimizer", "use_nesterov", "base_lr", "warmup_lr", "min_lr",
    "lr_scheduler", "warmup_length", "lr_adjust", "amp_level", "keep_bn_fp32", "beta",
    "clip_global_norm_value", "clip_global_norm", "is_dynamic_loss_scale", "epochs", "label_smoothing",
    "loss_scale", "weight_decay", "decay", "momentum", "batch_size", "num_parallel_workers",
    "device_target", "drop_path_rate",
]


@pytest.mark.parametrize(
    "name", ["ddrnet23_imagenet_ascend", "ddrnet23_imagenet_ascend_8x512", "ddrnet23_imagenet_gpu",
             "ddrnet23_imagenet_cpu", "digits_demo"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.image_size % 32 == 0
    if name.startswith("ddrnet23_imagenet"):
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        missing = [k for k in RECIPE_KEYS if k not in raw]
        assert not missing, f"{name} lacks recipe keys {missing}"


def test_zoo_recipe_values():
    cfg = load_config(CONFIGS / "ddrnet23_imagenet_gpu.yaml")
    assert (cfg.arch, cfg.optimizer, cfg.use_nesterov, cfg.base_lr, cfg.min_lr, cfg.warmup_lr) == (
        "ddrnet23", "momentum", True, 0.1, 1e-5, 1e-6)
    assert (cfg.epochs, cfg.warmup_length, cfg.lr_scheduler) == (300, 10, "cosine_lr")
    assert (cfg.mix_up, cfg.cutmix, cfg.switch_prob, cfg.mixup_prob) == (0.8, 1.0, 0.5, 1.0)
    assert (cfg.re_prob, cfg.label_smoothing) == (0.25, 0.1)
    assert (cfg.auto_augment, cfg.amp_level, cfg.keep_bn_fp32, cfg.clip_global_norm_value) == (
        "rand-m9-mstd0.5-inc1", "O2", True, 5.0)
    assert (cfg.batch_size, cfg.weight_decay, cfg.drop_path_rate) == (256, 1e-4, 0.1)
    assert cfg.is_dynamic_loss_scale
    assert load_config(CONFIGS / "ddrnet23_imagenet_ascend.yaml").batch_size == 128


@pytest.mark.parametrize(("name", "per_card", "global_batch"), [
    ("ddrnet23_imagenet_ascend", 128, 1024), ("ddrnet23_imagenet_gpu", 256, 2048),
    ("ddrnet23_imagenet_ascend_8x512", 512, 4096)])
def test_zoo_configs_state_their_global_batch_and_the_lr_it_implies(name, per_card, global_batch):
    from training.schedules import lr_scale

    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (cfg.batch_size, cfg.global_batch, cfg.drop_path_mode) == (per_card, global_batch, "zoo")
    peak = cfg.base_lr * lr_scale(global_batch)
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert f"= {peak:g}" in text, f"{name} does not state its peak LR {peak:g}"
    with pytest.raises(ConfigError, match=r"global_batch .* is not a multiple of batch_size"):
        load_config(CONFIGS / f"{name}.yaml", [f"global_batch={global_batch + 1}"])


def _base(**kw):
    data = {"data_url": "/data", "epochs": 5, "warmup_length": 1}
    data.update(kw)
    return data


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"learning_rate": 0.1}, "learning_rate", "unknown key"),
        ({"epochs": "ten"}, "epochs", "integer"),
        ({"epochs": 2.5}, "epochs", "integer"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"base_lr": -0.1}, "base_lr", "greater than 0"),
        ({"mixup_prob": 1.5}, "mixup_prob", "less than or equal to 1"),
        ({"image_size": 100}, "image_size", "multiple of 32"),
        ({"image_size": 32}, "image_size", "greater than or equal to 64"),
        ({"arch": "resnet50"}, "arch", "unknown arch"),
        ({"auto_augment": "rand-q9"}, "auto_augment", "unknown section"),
        ({"auto_augment": "augmix-m5"}, "auto_augment", "must start with 'rand'"),
        ({"optimizer": "lamb"}, "optimizer", "momentum"),
        ({"amp_level": "O4"}, "amp_level", "O3"),
        ({"device_target": "TPU"}, "device_target", "Ascend"),
        ({"mixup_mode": "pair"}, "mixup_mode", "batch"),
        ({"beta": [0.9, 1.5]}, "beta", "[0, 1)"),
        ({"beta": [0.9]}, "beta", "too few items"),
        ({"crop_scale": [0.5, 0.1]}, "crop_scale", "low <= high"),
        ({"use_nesterov": "maybe"}, "use_nesterov", "boolean"),
        ({"corrupt_images": "ignore"}, "corrupt_images", "skip"),
    ],
)
def test_bad_values_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        validate_config(_base(**overrides), source="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: ")
    assert f"{key}:" in message or f"{key}." in message
    assert words in message


def test_missing_required_and_cross_field_checks():
    with pytest.raises(ConfigError, match="data_url: required key is missing"):
        validate_config({"epochs": 3})
    with pytest.raises(ConfigError, match=r"warmup_length \(10\) exceeds epochs \(5\)"):
        validate_config(_base(warmup_length=10))
    with pytest.raises(ConfigError, match=r"min_lr .* exceeds base_lr"):
        validate_config(_base(base_lr=0.01, min_lr=0.1))
    with pytest.raises(ConfigError, match="mixup_off_epoch"):
        validate_config(_base(mixup_off_epoch=9))


def test_zoo_arch_spelling_and_policy_none():
    cfg = validate_config(_base(arch="DDRNet23", auto_augment="None"))
    assert cfg.arch == "ddrnet23" and cfg.auto_augment is None


def test_overrides_and_files(tmp_path):
    assert parse_overrides(["epochs=2", "beta=[0.9, 0.99]", "auto_augment=null", "output_dir=a=b"]) == {
        "epochs": 2, "beta": [0.9, 0.99], "auto_augment": None, "output_dir": "a=b"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])
    path = tmp_path / "c.yaml"
    path.write_text("data_url: /d\nepochs: 4\nwarmup_length: 1\n")
    cfg = load_config(path, ["epochs=3", "seed=7"])
    assert (cfg.epochs, cfg.seed) == (3, 7)
    with pytest.raises(ConfigError, match="nonsense: unknown key"):
        load_config(path, ["nonsense=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    path.write_text("data_url: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "digits_demo.yaml")
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    pre = cfg.eval_preprocess()
    assert (pre.image_size, pre.crop_pct, pre.resize_mode) == (64, 0.875, "squash")
    assert pre.resize_size == 73
