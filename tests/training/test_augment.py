"""Augmentation: RandAugment policy parsing and ops, crops, erasing, mixup/cutmix targets and areas."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from training.augment import (
    Mixup,
    RandAugment,
    RandomErasing,
    TrainImageAugment,
    cutmix_box,
    parse_rand_augment,
    random_resized_crop_box,
    smooth_one_hot,
)


@pytest.fixture(scope="module")
def photo():
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize((160, 120))


def test_policy_parsing():
    p = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (p.magnitude, p.magnitude_std, p.increasing, p.num_layers, p.prob) == (9, 0.5, True, 2, 0.5)
    assert "PosterizeIncreasing" in p.op_names and "Posterize" not in p.op_names
    q = parse_rand_augment("rand-m7-n3-p0.3-mmax8-mstd101")
    assert (q.magnitude, q.num_layers, q.prob, q.magnitude_max, q.increasing) == (7, 3, 0.3, 8, False)
    assert q.magnitude_std == math.inf
    assert parse_rand_augment("rand-inc0").increasing is False
    bad_policies = [("autoaug-m9", "must start with 'rand'"), ("rand-x3", "unknown section"),
                    ("rand-m", "cannot parse"), ("rand-n0", "n (ops per image)"), ("rand-p2", "p must be")]
    for bad, words in bad_policies:
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_rand_augment(bad)


def test_rand_augment_is_a_function_of_the_rng(photo):
    ra = RandAugment(parse_rand_augment("rand-m9-mstd0.5-inc1"))
    a = [np.asarray(ra(photo, np.random.default_rng(s))) for s in range(6)]
    b = [np.asarray(ra(photo, np.random.default_rng(s))) for s in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.shape == (120, 160, 3) for x in a)
    assert sum(not np.array_equal(x, np.asarray(photo)) for x in a) >= 3  # ops do change images


def test_every_op_runs(photo):
    from training.augment import _OPS

    for name, (level_fn, op) in _OPS.items():
        for magnitude in (0.0, 5.0, 10.0):  # the extremes too: e.g. PosterizeIncreasing keeps 0 bits at 10
            args = level_fn(magnitude, np.random.default_rng(0)) if level_fn else ()
            out = op(photo, *args, fill=(124, 116, 104), resample=Image.BICUBIC)
            assert out.size == photo.size and out.mode == "RGB", name


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(160, 120, rng, (0.08, 1.0), (3 / 4, 4 / 3))
        assert left >= 0 and top >= 0 and left + w <= 160 and top + h <= 120
        assert 0.07 <= w * h / (160 * 120) <= 1.0
    # impossible aspect ratios fall back to the centre crop clamped to the ratio
    box = random_resized_crop_box(400, 100, np.random.default_rng(0), (0.99, 1.0), (1.0, 1.0))
    assert box == (150, 0, 100, 100)


def test_train_image_augment_shape_and_determinism(photo):
    aug = TrainImageAugment(64, "random", "rand-m9-mstd0.5-inc1")
    x = aug(photo, np.random.default_rng([1, 2, 3]))
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    assert np.array_equal(x, aug(photo, np.random.default_rng([1, 2, 3])))
    jitter = TrainImageAugment(64, "bilinear", None, color_jitter_strength=0.4, hflip=1.0)
    assert jitter(photo, np.random.default_rng(0)).shape == (64, 64, 3)


def test_random_erasing_area_and_modes():
    for mode in ("const", "rand", "pixel"):
        eraser = RandomErasing(1.0, mode, max_count=1)
        for seed in range(20):
            img = np.full((3, 64, 64), 7.0, np.float32)
            eraser(img, np.random.default_rng(seed))
            changed = (img != 7.0).any(axis=0).mean()
            assert changed <= 1 / 3 + 0.01
            if mode == "const":
                assert ((img == 0) | (img == 7)).all()
    img = np.full((3, 32, 32), 7.0, np.float32)
    RandomErasing(0.0)(img, np.random.default_rng(0))
    assert (img == 7.0).all()


def test_smooth_one_hot_and_no_mix_targets():
    t = smooth_one_hot(np.array([2, 0]), 4, 0.1)
    assert t.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert t[0, 2] == pytest.approx(0.925) and t[0, 0] == pytest.approx(0.025)
    mix = Mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=4)
    images = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    before = images.copy()
    out, targets, lam = mix(images, np.array([0, 1, 2, 3]), np.random.default_rng(0), enabled=False)
    assert lam == 1.0 and np.array_equal(out, before)
    assert np.allclose(targets, smooth_one_hot(np.array([0, 1, 2, 3]), 4, 0.1))


def test_mixup_targets_sum_to_one_and_follow_lambda():
    mix = Mixup(0.8, 0.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5)
    rng = np.random.default_rng(3)
    images = rng.random((6, 3, 16, 16), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    orig = images.copy()
    out, targets, lam = mix(images, labels, rng)
    assert 0 < lam < 1
    assert targets.sum(axis=1) == pytest.approx(np.ones(6), abs=1e-6)
    assert np.allclose(out, lam * orig + (1 - lam) * orig[::-1], atol=1e-6)
    # the smoothed on-value is split between a sample's label and its partner's (the reversed batch)
    assert targets[0, 0] == pytest.approx(lam * 0.92 + (1 - lam) * 0.92, abs=1e-6)  # partner also class 0
    assert targets[1, 1] == pytest.approx(lam * 0.92 + (1 - lam) * 0.02, abs=1e-6)


def test_cutmix_lambda_is_the_kept_area():
    mix = Mixup(0.0, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0, num_classes=2)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        images = np.stack([np.zeros((3, 32, 48), np.float32), np.ones((3, 32, 48), np.float32)])
        out, targets, lam = mix(images, np.array([0, 1]), rng)
        # the fraction of image 0 now taken from image 1 (all ones) is 1 - lam
        assert 1 - lam == pytest.approx(float(out[0, 0].astype(np.float64).mean()), abs=1e-12)
        assert targets[0] == pytest.approx([lam, 1 - lam]) and targets.sum(axis=1) == pytest.approx([1, 1])


def test_switch_prob_chooses_between_mixup_and_cutmix():
    mix = Mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0, num_classes=2)
    choices = [mix.params(np.random.default_rng(s))[1] for s in range(400)]
    assert 0.4 < np.mean(choices) < 0.6
    never = Mixup(0.8, 1.0, prob=0.0, switch_prob=0.5, label_smoothing=0.0, num_classes=2)
    assert all(never.params(np.random.default_rng(s)) == (1.0, False) for s in range(50))


def test_cutmix_box_size():
    top, bottom, left, right = cutmix_box(100, 100, 0.75, np.random.default_rng(0))
    assert 0 <= top <= bottom <= 100 and 0 <= left <= right <= 100
    assert (bottom - top) <= 50 and (right - left) <= 50
