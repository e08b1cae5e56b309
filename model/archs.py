"""DDRNet architecture facts and default eval configs, as plain data (imports no MindSpore).

Owns: the per-architecture hyper-parameters (blocks per stage, widths), the two weight variants
and the eval preprocessing a model of each architecture expects by default. The network code
(``model.ddrnet``) and the preprocessing side (``model.preprocess``, ``model.json`` at export) both
read from here, so the server can learn a model's transform without loading MindSpore.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Weight variants. ``zoo``: the MindSpore model zoo's DDRNet-23 (no stem conv bias, TF-style
#: "same" padding on stride-2 convs, legacy bilinear without half-pixel centres).
#: ``authors``: the authors' PyTorch code (stem conv bias, symmetric padding, half-pixel bilinear).
VARIANTS: tuple[str, ...] = ("zoo", "authors")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """Width and depth of one DDRNet classifier."""

    layers: tuple[int, int, int, int]  # BasicBlocks in layer1..layer4 (layer3 counted over both groups)
    planes: int  # p: width of the stem; the high-resolution branch has 2p channels
    last_planes: int  # channels of last_layer, fed to the classifier
    split_layer3: bool  # DDRNet-39: layer3/layer3_ in two groups with two fusions


@dataclass(frozen=True)
class EvalConfig:
    """The eval transform a model expects: the keys ``model.json``'s ``preprocess`` records."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    resize_mode: str = "squash"  # the zoo resizes to a square (int(224 / 0.875),) * 2, then crops
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for mean/std)."""
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out


ARCHS: dict[str, ArchSpec] = {
    "ddrnet23": ArchSpec(layers=(2, 2, 2, 2), planes=64, last_planes=2048, split_layer3=False),
    "ddrnet23_slim": ArchSpec(layers=(2, 2, 2, 2), planes=32, last_planes=1024, split_layer3=False),
    "ddrnet39": ArchSpec(layers=(3, 4, 6, 3), planes=64, last_planes=2048, split_layer3=True),
}

DEFAULT_EVAL_CONFIGS: dict[str, EvalConfig] = {name: EvalConfig() for name in ARCHS}
