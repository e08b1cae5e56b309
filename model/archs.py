"""DDRNet architecture facts and default eval configs, as plain data (imports no MindSpore).

Owns: the per-architecture hyper-parameters (blocks per stage, widths), the two weight variants
and the eval preprocessing a model of each architecture expects by default. The network code
(``model.ddrnet``) and the preprocessing side (``model.preprocess_config``, ``model.json`` at export)
both read from here, so the server can learn a model's transform without loading MindSpore.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.preprocess_config import PreprocessConfig

#: Weight variants. ``zoo``: the MindSpore model zoo's DDRNet-23 (no stem conv bias, TF-style
#: "same" padding on stride-2 convs, legacy bilinear without half-pixel centres).
#: ``authors``: the authors' PyTorch code (stem conv bias, symmetric padding, half-pixel bilinear).
VARIANTS: tuple[str, ...] = ("zoo", "authors")
#: What stochastic depth drops: ``zoo`` the shortcut (the model zoo's DDRNet, the published 76.6 %),
#: ``branch`` the residual branch (timm / the stochastic-depth paper). See ``model.ddrnet``.
DROP_PATH_MODES: tuple[str, ...] = ("zoo", "branch")

@dataclass(frozen=True)
class ArchSpec:
    """Width and depth of one DDRNet classifier."""

    layers: tuple[int, int, int, int]  # BasicBlocks in layer1..layer4 (layer3 counted over both groups)
    planes: int  # p: width of the stem; the high-resolution branch has 2p channels
    last_planes: int  # channels of last_layer, fed to the classifier
    split_layer3: bool  # DDRNet-39: layer3/layer3_ in two groups with two fusions


ARCHS: dict[str, ArchSpec] = {
    "ddrnet23": ArchSpec(layers=(2, 2, 2, 2), planes=64, last_planes=2048, split_layer3=False),
    "ddrnet23_slim": ArchSpec(layers=(2, 2, 2, 2), planes=32, last_planes=1024, split_layer3=False),
    "ddrnet39": ArchSpec(layers=(3, 4, 6, 3), planes=64, last_planes=2048, split_layer3=True),
}

#: The eval preprocessing each architecture's published weights expect (the zoo's: 224, crop 0.875,
#: squash to 256x256, bicubic, ImageNet mean/std); ``model.preprocess_config.resolve_preprocess``
#: falls back to it when neither the caller nor the model says otherwise.
DEFAULT_PREPROCESS: dict[str, PreprocessConfig] = {name: PreprocessConfig() for name in ARCHS}
