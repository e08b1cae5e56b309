"""Train-time augmentation with the recipe's (timm's) semantics, driven by an explicit RNG.

Owns: the timm RandAugment policy string (``rand-m9-mstd0.5-inc1``) and its ops, RandomResizedCrop,
horizontal flip, colour jitter, random erasing, and batch-mode mixup/cutmix with label smoothing.

Why hand-written rather than ``mindspore.dataset.vision``: every random decision here is drawn from a
``numpy.random.Generator`` seeded by (seed, epoch, sample index) (or (seed, epoch, batch) for
mixup), so an epoch's augmentation is a pure function of those numbers. That is what makes a resumed
run identical to an uninterrupted one and the result independent of the worker count; MindSpore's
random ops draw from a pipeline-global generator whose state cannot be saved or restored. Beyond
that, ``vision.RandAugment`` is torchvision's variant (no magnitude noise, no per-op probability,
a different op set), ``vision.MixUpBatch``/``CutMixBatch`` have no switch probability, no label
smoothing and no cutmix area correction, and ``vision.RandomErasing`` has no ``re_count``/``rand``
mode. The deterministic steps (normalise, HWC→CHW) do use ``mindspore.dataset.vision`` (``data.py``).
Pixel operations are Pillow's, as in timm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from model import counter_rng

_LEVEL_DENOM = 10.0  # timm: magnitudes are on a 0..10 scale
_TRANSLATE_PCT = 0.45  # timm's default translate_pct for the *Rel translations
_PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
_RANDOM_INTERP = (Image.BILINEAR, Image.BICUBIC)  # timm's "random" interpolation choices


def pil_interpolation(name: str, rng: np.random.Generator) -> int:
    """PIL resampling filter for ``name``; ``random`` picks bilinear or bicubic per call (timm)."""
    if name == "random":
        return _RANDOM_INTERP[int(rng.integers(2))]
    return _PIL_INTERP[name]


# ---------------------------------------------------------------------------- RandAugment policy


@dataclass(frozen=True)
class RandAugmentPolicy:
    """A parsed timm ``rand-...`` policy."""

    magnitude: float = 10.0  # m: 0..10
    num_layers: int = 2  # n: ops applied per image
    magnitude_std: float = 0.0  # mstd: Gaussian noise on the magnitude per op call; inf = uniform
    magnitude_max: float = _LEVEL_DENOM  # mmax: upper clip of the noisy magnitude
    increasing: bool = False  # inc: the op set whose severity grows with the magnitude
    prob: float = 0.5  # p: probability each chosen op is applied

    @property
    def op_names(self) -> tuple[str, ...]:
        return _RAND_INCREASING_TRANSFORMS if self.increasing else _RAND_TRANSFORMS


_POLICY_SECTION = re.compile(r"^([a-z]+)(\d.*)$")


def parse_rand_augment(policy: str) -> RandAugmentPolicy:
    """Parse ``rand-m9-mstd0.5-inc1`` (timm's syntax: sections m, n, mstd, mmax, inc, p).

    Raises ValueError naming the bad section.
    """
    parts = policy.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(f"policy {policy!r} must start with 'rand' (only RandAugment is supported)")
    values: dict[str, float | int | bool] = {}
    for section in parts[1:]:
        match = _POLICY_SECTION.match(section)
        if not match:
            raise ValueError(f"policy {policy!r}: cannot parse section {section!r} (expected e.g. m9)")
        key, raw = match.groups()
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"policy {policy!r}: section {section!r} has a non-numeric value") from None
        if key == "m":
            if not 0 <= number <= 30:
                raise ValueError(f"policy {policy!r}: magnitude m must be in [0, 30], got {raw}")
            values["magnitude"] = number
        elif key == "n":
            if number != int(number) or not 1 <= number <= 15:
                raise ValueError(f"policy {policy!r}: n (ops per image) must be an integer in [1, 15]")
            values["num_layers"] = int(number)
        elif key == "mstd":
            if number < 0:
                raise ValueError(f"policy {policy!r}: mstd must be >= 0")
            values["magnitude_std"] = math.inf if number > 100 else number  # timm: >100 means uniform
        elif key == "mmax":
            if number <= 0:
                raise ValueError(f"policy {policy!r}: mmax must be > 0")
            values["magnitude_max"] = number
        elif key == "inc":
            values["increasing"] = number != 0
        elif key == "p":
            if not 0 <= number <= 1:
                raise ValueError(f"policy {policy!r}: p must be in [0, 1]")
            values["prob"] = number
        else:
            raise ValueError(
                f"policy {policy!r}: unknown section {section!r} (known: m, n, mstd, mmax, inc, p)"
            )
    return RandAugmentPolicy(**values)


# ---------------------------------------------------------------------------- RandAugment ops
# Level functions map a 0..10 magnitude to op arguments, exactly as timm's auto_augment.py does.


def _negate(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() > 0.5 else v


def _rotate_level(m: float, rng: np.random.Generator) -> tuple:
    return (_negate(m / _LEVEL_DENOM * 30.0, rng),)


def _enhance_level(m: float, rng: np.random.Generator) -> tuple:
    return (m / _LEVEL_DENOM * 1.8 + 0.1,)


def _enhance_increasing_level(m: float, rng: np.random.Generator) -> tuple:
    return (max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng)),)


def _shear_level(m: float, rng: np.random.Generator) -> tuple:
    return (_negate(m / _LEVEL_DENOM * 0.3, rng),)


def _translate_rel_level(m: float, rng: np.random.Generator) -> tuple:
    return (_negate(m / _LEVEL_DENOM * _TRANSLATE_PCT, rng),)


def _posterize_level(m: float, rng: np.random.Generator) -> tuple:
    return (int(m / _LEVEL_DENOM * 4),)


def _posterize_increasing_level(m: float, rng: np.random.Generator) -> tuple:
    return (4 - _posterize_level(m, rng)[0],)


def _solarize_level(m: float, rng: np.random.Generator) -> tuple:
    return (int(m / _LEVEL_DENOM * 256),)


def _solarize_increasing_level(m: float, rng: np.random.Generator) -> tuple:
    return (256 - _solarize_level(m, rng)[0],)


def _solarize_add_level(m: float, rng: np.random.Generator) -> tuple:
    return (int(m / _LEVEL_DENOM * 110),)


def _affine(img: Image.Image, matrix: tuple, fill: tuple, resample: int) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _posterize(img: Image.Image, bits: int, **_: object) -> Image.Image:
    if bits >= 8:
        return img
    if bits <= 0:  # keeping 0 bits is black; Pillow >= 10 rejects bits=0 that timm's older Pillow took
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def _solarize_add(img: Image.Image, add: int, **_: object) -> Image.Image:
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# name -> (level function or None, op(img, *args, fill=, resample=))
_OPS: dict[str, tuple[Callable | None, Callable[..., Image.Image]]] = {
    "AutoContrast": (None, lambda img, **_: ImageOps.autocontrast(img)),
    "Equalize": (None, lambda img, **_: ImageOps.equalize(img)),
    "Invert": (None, lambda img, **_: ImageOps.invert(img)),
    "Rotate": (
        _rotate_level, lambda img, deg, fill, resample: img.rotate(deg, resample=resample, fillcolor=fill)),
    "Posterize": (_posterize_level, _posterize),
    "PosterizeIncreasing": (_posterize_increasing_level, _posterize),
    "Solarize": (_solarize_level, lambda img, t, **_: ImageOps.solarize(img, t)),
    "SolarizeIncreasing": (_solarize_increasing_level, lambda img, t, **_: ImageOps.solarize(img, t)),
    "SolarizeAdd": (_solarize_add_level, _solarize_add),
    "Color": (_enhance_level, lambda img, f, **_: ImageEnhance.Color(img).enhance(f)),
    "ColorIncreasing": (_enhance_increasing_level, lambda img, f, **_: ImageEnhance.Color(img).enhance(f)),
    "Contrast": (_enhance_level, lambda img, f, **_: ImageEnhance.Contrast(img).enhance(f)),
    "ContrastIncreasing": (
        _enhance_increasing_level, lambda img, f, **_: ImageEnhance.Contrast(img).enhance(f)),
    "Brightness": (_enhance_level, lambda img, f, **_: ImageEnhance.Brightness(img).enhance(f)),
    "BrightnessIncreasing": (
        _enhance_increasing_level, lambda img, f, **_: ImageEnhance.Brightness(img).enhance(f)),
    "Sharpness": (_enhance_level, lambda img, f, **_: ImageEnhance.Sharpness(img).enhance(f)),
    "SharpnessIncreasing": (
        _enhance_increasing_level, lambda img, f, **_: ImageEnhance.Sharpness(img).enhance(f)),
    "ShearX": (_shear_level, lambda img, s, fill, resample: _affine(img, (1, s, 0, 0, 1, 0), fill, resample)),
    "ShearY": (_shear_level, lambda img, s, fill, resample: _affine(img, (1, 0, 0, s, 1, 0), fill, resample)),
    "TranslateXRel": (
        _translate_rel_level,
        lambda img, p, fill, resample: _affine(img, (1, 0, p * img.size[0], 0, 1, 0), fill, resample),
    ),
    "TranslateYRel": (
        _translate_rel_level,
        lambda img, p, fill, resample: _affine(img, (1, 0, 0, 0, 1, p * img.size[1]), fill, resample),
    ),
}

_RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)


class RandAugment:
    """timm's RandAugment: ``num_layers`` ops drawn with replacement, each applied with ``prob``,
    magnitude ``N(m, mstd)`` clipped to ``[0, mmax]``, geometric fill = the mean colour."""

    def __init__(self, policy: RandAugmentPolicy, interpolation: str = "bicubic",
                 fill: tuple[int, int, int] = (124, 116, 104)) -> None:
        self.policy = policy
        self.interpolation = interpolation
        self.fill = fill

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        p = self.policy
        names = p.op_names
        for idx in rng.choice(len(names), p.num_layers, replace=True):
            if p.prob < 1.0 and rng.random() > p.prob:
                continue
            magnitude = p.magnitude
            if p.magnitude_std == math.inf:
                magnitude = rng.uniform(0.0, magnitude)
            elif p.magnitude_std > 0:
                magnitude = rng.normal(magnitude, p.magnitude_std)
            magnitude = max(0.0, min(magnitude, p.magnitude_max))
            level_fn, op = _OPS[names[idx]]
            args = level_fn(magnitude, rng) if level_fn else ()
            img = op(img, *args, fill=self.fill, resample=pil_interpolation(self.interpolation, rng))
        return img


# ---------------------------------------------------------------------------- crop, flip, jitter


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """timm/torchvision RandomResizedCrop parameters → (left, top, w, h); 10 tries, then centre."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """torchvision ColorJitter(brightness=s, contrast=s, saturation=s) on PIL: factors uniform in
    [max(0, 1 - s), 1 + s], the three applied in random order."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    for i in rng.permutation(3):
        img = enhancers[i](img).enhance(float(factors[i]))
    return img


class TrainImageAugment:
    """PIL RGB image → augmented uint8 HWC array of ``size``×``size`` (crop, flip, RandAugment or
    colour jitter). Normalisation and random erasing follow in ``data.py``."""

    def __init__(self, size: int, interpolation: str = "bicubic", auto_augment: str | None = None,
                 color_jitter_strength: float = 0.0, hflip: float = 0.5,
                 mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
                 scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size = size
        self.scale, self.ratio = scale, ratio
        self.interpolation = interpolation
        self.hflip = hflip
        fill = tuple(min(255, round(255 * m)) for m in mean)
        self.rand_augment = (
            RandAugment(parse_rand_augment(auto_augment), interpolation, fill) if auto_augment else None
        )
        self.color_jitter = color_jitter_strength

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        left, top, w, h = random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio)
        img = img.crop((left, top, left + w, top + h)).resize(
            (self.size, self.size), pil_interpolation(self.interpolation, rng))
        if rng.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        elif self.color_jitter > 0:
            img = color_jitter(img, self.color_jitter, rng)
        return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------- random erasing


class RandomErasing:
    """timm RandomErasing on a normalised CHW float32 image (in place): with ``prob``, 1..``max_count``
    boxes of area 2 %–33 % (split between boxes), log-uniform aspect 0.3–3.3; fill ``const`` (0),
    ``rand`` (one normal colour per box) or ``pixel`` (normal per pixel).

    Split in two so the same erasing can run on the host or on the device (``training.batch_ops``):
    :meth:`plan` draws the boxes (and ``rand`` colours) from ``rng``; :meth:`apply` paints them. The
    ``pixel`` noise is not drawn from ``rng`` but is the counter-based normal (``model.counter_rng``)
    of :func:`erasing_noise` at each pixel's position, which the device computes the same way."""

    def __init__(self, prob: float, mode: str = "pixel", max_count: int = 1,
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> None:
        if mode not in ("const", "rand", "pixel"):
            raise ValueError(f"random erasing mode must be const, rand or pixel, got {mode!r}")
        self.prob = prob
        self.mode = mode
        self.max_count = max_count
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def plan(self, img_h: int, img_w: int, rng: np.random.Generator
             ) -> list[tuple[int, int, int, int, np.ndarray | None]]:
        """The boxes to erase, ``(top, left, height, width, rand colour or None)`` each."""
        if self.prob <= 0 or rng.random() > self.prob:
            return []
        area = img_h * img_w
        count = 1 if self.max_count == 1 else int(rng.integers(1, self.max_count + 1))
        boxes = []
        for _ in range(count):
            for _attempt in range(10):
                target_area = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = round(math.sqrt(target_area * aspect))
                w = round(math.sqrt(target_area / aspect))
                if w < img_w and h < img_h:
                    top = int(rng.integers(0, img_h - h + 1))
                    left = int(rng.integers(0, img_w - w + 1))
                    colour = rng.standard_normal(3, dtype=np.float32) if self.mode == "rand" else None
                    boxes.append((top, left, h, w, colour))
                    break
        return boxes

    def apply(self, img: np.ndarray, boxes, noise_key: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """Paint ``boxes`` (from :meth:`plan`) into ``img`` in place; ``noise_key`` = (seed, epoch,
        sample key) selects the ``pixel`` noise."""
        for r, (top, left, h, w, colour) in enumerate(boxes):
            region = img[:, top : top + h, left : left + w]
            if self.mode == "pixel":
                region[...] = erasing_noise(*noise_key, r, img.shape, (top, left, h, w))
            elif self.mode == "rand":
                region[...] = colour.reshape(-1, 1, 1)
            else:
                region[...] = np.float32(0)
        return img

    def __call__(self, img: np.ndarray, rng: np.random.Generator,
                 noise_key: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        return self.apply(img, self.plan(img.shape[1], img.shape[2], rng), noise_key)


def erasing_noise(seed: int, epoch: int, key: int, box: int, shape: tuple[int, int, int],
                  region: tuple[int, int, int, int]) -> np.ndarray:
    """The pixel-mode fill of ``region`` (top, left, height, width) of a CHW image of ``shape``: a
    standard normal per pixel position, a pure function of (seed, epoch, sample key, box)."""
    chan, height, width = shape
    top, left, h, w = region
    c, y, x = np.meshgrid(np.arange(chan), np.arange(top, top + h), np.arange(left, left + w), indexing="ij")
    return counter_rng.normals((c * height + y) * width + x, counter_rng.chain(seed, epoch, key, box))


# ---------------------------------------------------------------------------- mixup / cutmix


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """Integer labels → float32 targets: 1 - smoothing + smoothing/C on the label, smoothing/C off it."""
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return out


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm rand_bbox: a box of side sqrt(1 - lam) × image side, centred uniformly, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


def _mix_with_reverse(images: np.ndarray, lam_value: float, other_value: float | None = None) -> np.ndarray:
    """``images = images * lam + images[::-1] * (1 - lam)`` in place (``other_value``, when given, is the
    float32 ``1 - lam`` already rounded), pair by pair (the same float32
    products and sums, bit for bit), with half a batch of temporaries instead of two whole batches."""
    lam = np.float32(lam_value)
    other = np.float32(1.0 - lam_value if other_value is None else other_value)
    n, half = len(images), len(images) // 2
    front, back = images[:half], images[n - half :][::-1]  # views: back[i] is images[n - 1 - i]
    saved = front.copy()
    front *= lam
    front += back * other
    back *= lam
    back += saved * other
    if n % 2:
        mid = images[half]
        mid[...] = mid * lam + mid * other
    return images


class Mixup:
    """timm ``Mixup(mode='batch')``: with ``prob`` the whole batch is mixed with its reverse, by mixup
    (λ ~ Beta(mix_up)) or cutmix (λ ~ Beta(cutmix), corrected to the clipped box area), choosing
    cutmix with ``switch_prob`` when both are on. Targets are label-smoothed one-hots mixed by λ."""

    def __init__(self, mix_up: float, cutmix: float, prob: float, switch_prob: float,
                 label_smoothing: float, num_classes: int) -> None:
        self.mix_up, self.cutmix = mix_up, cutmix
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    def params(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(λ, use_cutmix) for one batch; λ == 1 means no mixing."""
        if not (self.mix_up > 0 or self.cutmix > 0) or rng.random() >= self.prob:
            return 1.0, False
        if self.mix_up > 0 and self.cutmix > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix > 0
        alpha = self.cutmix if use_cutmix else self.mix_up
        return float(rng.beta(alpha, alpha)), use_cutmix

    def plan(self, height: int, width: int, rng: np.random.Generator, enabled: bool = True
             ) -> tuple[int, float, tuple[int, int, int, int]]:
        """(mode 0 none / 1 mixup / 2 cutmix, λ (area-corrected for cutmix), cutmix box)."""
        lam, use_cutmix = self.params(rng) if enabled else (1.0, False)
        if lam >= 1.0:
            return 0, 1.0, (0, 0, 0, 0)
        if use_cutmix:
            top, bottom, left, right = cutmix_box(height, width, lam, rng)
            corrected = 1.0 - (bottom - top) * (right - left) / float(height * width)
            return 2, corrected, (top, bottom, left, right)
        return 1, lam, (0, 0, 0, 0)

    def targets(self, labels: np.ndarray, lam: float) -> np.ndarray:
        y1 = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return (y1 * np.float32(lam) + y1[::-1] * np.float32(1.0 - lam)).astype(np.float32)

    def __call__(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 enabled: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
        """Mix ``images`` (N, C, H, W float32, in place) → (images, soft targets (N, classes), λ)."""
        mode, lam, (top, bottom, left, right) = self.plan(images.shape[-2], images.shape[-1], rng, enabled)
        if mode == 2:
            images[:, :, top:bottom, left:right] = images[::-1, :, top:bottom, left:right].copy()
        elif mode == 1:
            _mix_with_reverse(images, lam)
        return images, self.targets(labels, lam), lam
