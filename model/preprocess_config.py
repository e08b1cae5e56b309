"""The one preprocessing config type and the one rule that decides which setting wins.

:class:`PreprocessConfig` says how a model's input is made from an image (input size, crop_pct,
interpolation, resize mode, mean, std, EXIF handling). It is recorded in ``model.json`` at export
(``model.manifest``), built by training eval from the training config, and read back by the server;
:class:`model.preprocess.EvalTransform` turns it into the transform. :func:`resolve_preprocess` is the
single resolver all three use (timm's ``resolve_data_config``): explicit settings win over the config a
model carries (its ``model.json``, its training run), which wins over the architecture's default.

Standard library only, Python 3.7 syntax: the MindSpore Lite worker (Python 3.7) reads manifests
that hold this type.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Union

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Resampling filter names (``model.preprocess`` maps them to Pillow's filters).
INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
RESIZE_MODES = ("squash", "shorter_side")
#: Keys every recorded config (``model.json``'s ``preprocess``) must state; the others have defaults.
RECORDED_KEYS = ("image_size", "crop_pct", "interpolation", "resize_mode", "mean", "std")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model's input is made from an image; recorded in ``model.json`` (``to_dict``).

    Defaults are the MindSpore model zoo's DDRNet eval: 224, crop_pct 0.875 → squash to 256×256,
    bicubic, ImageNet mean/std. ``ValueError`` names the offending field.
    """

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    resize_mode: str = "squash"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    apply_exif_orientation: bool = False

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= 4096:
            raise ValueError(f"preprocess.image_size must be an integer in [1, 4096], got {size!r}")
        object.__setattr__(self, "image_size", int(size))
        crop = self.crop_pct
        if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not 0 < crop <= 1:
            raise ValueError(f"preprocess.crop_pct must be a number in (0, 1], got {crop!r}")
        object.__setattr__(self, "crop_pct", float(crop))
        if self.interpolation not in INTERPOLATION_NAMES:
            names = sorted(INTERPOLATION_NAMES)
            raise ValueError(f"preprocess.interpolation must be one of {names}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            modes = RESIZE_MODES
            raise ValueError(f"preprocess.resize_mode must be one of {modes}, got {self.resize_mode!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                triple = tuple(float(v) for v in value if not isinstance(v, (bool, str)))
            except TypeError:
                triple = ()
            if len(triple) != 3 or len(triple) != len(value) or not all(math.isfinite(v) for v in triple):
                raise ValueError(f"preprocess.{name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, triple)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"preprocess.std must be positive, got {self.std!r}")
        if not isinstance(self.apply_exif_orientation, bool):
            value = self.apply_exif_orientation
            raise ValueError(f"preprocess.apply_exif_orientation must be true or false, got {value!r}")

    @property
    def resize_size(self) -> int:
        """The square side (squash) or shorter side (shorter_side) before cropping: int(size / crop_pct)."""
        return int(self.image_size / self.crop_pct)

    def to_dict(self) -> dict:
        """JSON-ready dict (mean/std as lists) for ``model.json``; ``from_dict`` reads it back."""
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    def replace(self, **changes: Any) -> PreprocessConfig:
        """A copy with ``changes`` applied (validated); None values leave a field as it is."""
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return PreprocessConfig.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], required: tuple = ()) -> PreprocessConfig:
        """Build from a mapping: an unknown key is an error naming it; a key in ``required`` must be
        there (a recorded config states them all: :data:`RECORDED_KEYS`); others take their default."""
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocess must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocess has unknown keys {unknown} (known: {sorted(known)})")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"preprocess lacks {missing} (a recorded config states {list(required)})")
        return cls(**dict(data))


ConfigLike = Union[PreprocessConfig, Mapping, None]


def resolve_preprocess(
    arch: str | None = None, recorded: ConfigLike = None, **explicit: Any
) -> PreprocessConfig:
    """The preprocessing to use: ``explicit`` settings (None = not given) over the ``recorded`` config
    of the model (its ``model.json`` or training run) over the default of architecture ``arch`` (when
    this build knows it) over :class:`PreprocessConfig`'s defaults. ValueError names a bad value."""
    if isinstance(recorded, PreprocessConfig):
        base = recorded
    elif recorded is not None:
        base = PreprocessConfig.from_dict(recorded)
    else:
        base = _arch_default(arch)
    return base.replace(**explicit) if any(v is not None for v in explicit.values()) else base


def _arch_default(arch: str | None) -> PreprocessConfig:
    from model.archs import DEFAULT_PREPROCESS  # plain data; model.archs imports this module

    return DEFAULT_PREPROCESS.get(arch or "", PreprocessConfig())
