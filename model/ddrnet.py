"""The DDRNet ImageNet classifiers (DDRNet-23, DDRNet-23-slim, DDRNet-39) as MindSpore cells, and their
registered entry functions.

Parameter names follow the published weights exactly: the MindSpore model zoo's DDRNet-23 checkpoint
for ``variant="zoo"`` and the authors' PyTorch state dicts (renamed weight→gamma etc. by
``model.convert``) for ``variant="authors"``. The two variants differ in three numerical details, all
kept here so each reproduces its source's forward pass:

=================  =====================================  =======================================
                   zoo                                    authors
=================  =====================================  =======================================
stem conv bias     none                                   yes (conv1.0.bias, conv1.3.bias)
3x3 conv padding   TF "same" (stride 2 pads bottom/right)  1 on every side
fusion upsampling  bilinear, half_pixel_centers=False     bilinear, half_pixel_centers=True
Bottleneck bn3     momentum 0.1 (MindSpore convention)    momentum 0.9 (= PyTorch 0.1)
=================  =====================================  =======================================

The fusion upsampling goes to the high-resolution branch's actual size, so any input whose sides
are multiples of 32 (64 and up) works; for the zoo's 224 input this is its fixed 28x28.

Stochastic depth (training only) has two formulations, ``drop_path_mode``:

- ``"zoo"`` (default), the model zoo's ``research/cv/DDRNet``, with which the published 76.6 % was
  trained: each block drops its *shortcut* (``out += drop_path(residual)``); rates rise linearly,
  ``linspace(0, rate, sum(layers))`` over layer1..layer4; the high-resolution branch's layer3_ takes
  the rates from the start of layer2 and layer4_ from the start of layer3 (one stage earlier; where the
  high branch is deeper than that stage, as in DDRNet-39, it continues into the next stage's rates);
  layer5 and layer5_ use ``rate`` itself.
- ``"branch"``: each block drops its residual *branch* (timm, the stochastic-depth paper); rates rise
  linearly over layer1..layer5 (``sum(layers) + 1`` blocks); the high branch reuses the rates of the
  same depth.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from model.archs import ARCHS, DROP_PATH_MODES, VARIANTS, ArchSpec
from model.layers import (
    BasicBlock,
    Bottleneck,
    batch_norm,
    conv1x1,
    conv3x3,
    conv_bn,
    init_conv_weights,
    resize_bilinear_like,
)
from model.registry import register_model


class DDRNet(nn.Cell):
    """Dual-resolution classifier: a low-resolution branch (layer3/4/5, /16 → /32) and a
    high-resolution branch (layer3_/4_/5_, /8) exchanging features after layer3 and layer4
    (bilateral fusion: ``low += down(relu(high))``, ``high += up(compress(relu(low)))``, both from
    the pre-fusion values), merged by ``down5`` before the classifier head."""

    def __init__(
        self,
        spec: ArchSpec,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        variant: str = "zoo",
        drop_path_mode: str = "zoo",
        drop_path_seed: int = 0,
    ) -> None:
        super().__init__()
        self._drop_path_seed = int(drop_path_seed)
        self._blocks_made = 0
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"drop_path_mode must be one of {DROP_PATH_MODES}, got {drop_path_mode!r}")
        self.drop_path_mode = drop_path_mode
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        zoo = variant == "zoo"
        self.variant = variant
        self.num_classes = num_classes
        self.split_layer3 = spec.split_layer3
        self.half_pixel_centers = not zoo
        self._pad_mode = "same" if zoo else "pad"
        self._bn3_momentum = 0.1 if zoo else 0.9
        p, hp = spec.planes, 2 * spec.planes
        n1, n2, n3, n4 = spec.layers
        rates = drop_path_schedule(spec.layers, drop_path_rate, drop_path_mode)
        r1, r2, r3, r4, r5 = (rates[k] for k in ("layer1", "layer2", "layer3", "layer4", "layer5"))
        h3, h4, h5 = rates["layer3_"], rates["layer4_"], rates["layer5_"]

        self.conv1 = nn.SequentialCell(
            [
                conv3x3(3, p, 2, pad_mode=self._pad_mode, has_bias=not zoo),
                batch_norm(p),
                nn.ReLU(),
                conv3x3(p, p, 2, pad_mode=self._pad_mode, has_bias=not zoo),
                batch_norm(p),
                nn.ReLU(),
            ]
        )
        # Low-resolution branch.
        self.layer1 = self._make_layer(BasicBlock, p, p, n1, r1)
        self.layer2 = self._make_layer(BasicBlock, p, 2 * p, n2, r2, stride=2)
        if self.split_layer3:
            half = n3 // 2
            self.layer3_1 = self._make_layer(BasicBlock, 2 * p, 4 * p, half, r3[:half], stride=2)
            self.layer3_2 = self._make_layer(BasicBlock, 4 * p, 4 * p, n3 - half, r3[half:])
        else:
            self.layer3 = self._make_layer(BasicBlock, 2 * p, 4 * p, n3, r3, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 4 * p, 8 * p, n4, r4, stride=2)
        # Bilateral fusions: 1x1 compression (low → high, then upsampled), strided 3x3 (high → low).
        if self.split_layer3:
            self.compression3_1 = conv_bn(conv1x1(4 * p, hp), hp)
            self.compression3_2 = conv_bn(conv1x1(4 * p, hp), hp)
        else:
            self.compression3 = conv_bn(conv1x1(4 * p, hp), hp)
        self.compression4 = conv_bn(conv1x1(8 * p, hp), hp)
        if self.split_layer3:
            self.down3_1 = conv_bn(conv3x3(hp, 4 * p, 2, pad_mode=self._pad_mode), 4 * p)
            self.down3_2 = conv_bn(conv3x3(hp, 4 * p, 2, pad_mode=self._pad_mode), 4 * p)
        else:
            self.down3 = conv_bn(conv3x3(hp, 4 * p, 2, pad_mode=self._pad_mode), 4 * p)
        self.down4 = self._down_twice(hp, 4 * p, 8 * p)
        # High-resolution branch (stays at /8); its blocks mirror the depth of the low branch's.
        if self.split_layer3:
            half = n3 // 2
            self.layer3_1_ = self._make_layer(BasicBlock, 2 * p, hp, half, h3[:half])
            self.layer3_2_ = self._make_layer(BasicBlock, hp, hp, n3 - half, h3[half:])
        else:
            self.layer3_ = self._make_layer(BasicBlock, 2 * p, hp, n3, h3)
        self.layer4_ = self._make_layer(BasicBlock, hp, hp, n4, h4)
        self.layer5_ = self._make_layer(Bottleneck, hp, hp, 1, h5)
        self.down5 = self._down_twice(4 * p, 8 * p, 16 * p)
        self.layer5 = self._make_layer(Bottleneck, 8 * p, 8 * p, 1, r5)
        # Head.
        self.last_layer = nn.SequentialCell(
            [conv1x1(16 * p, spec.last_planes), batch_norm(spec.last_planes), nn.ReLU()]
        )
        self.linear = nn.Dense(spec.last_planes, num_classes)
        init_conv_weights(self)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        in_ch: int,
        planes: int,
        blocks: int,
        rates: list[float],
        stride: int = 1,
    ) -> nn.SequentialCell:
        """``blocks`` blocks; a 1x1 conv+BN shortcut on the first when the shape changes; the last
        block of a layer with two or more blocks has no ReLU after its sum."""
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = conv_bn(conv1x1(in_ch, out_ch, stride), out_ch)
        extra = {"pad_mode": self._pad_mode, "drop_path_mode": self.drop_path_mode}
        if block is Bottleneck:
            extra["bn3_momentum"] = self._bn3_momentum
        cells = [block(in_ch, planes, stride, downsample, drop_path=rates[0],
                       drop_path_seed=self._next_seed(), **extra)]
        for i in range(1, blocks):
            cells.append(block(out_ch, planes, 1, None, no_relu=i == blocks - 1, drop_path=rates[i],
                               drop_path_seed=self._next_seed(), **extra))
        return nn.SequentialCell(cells)

    def _next_seed(self) -> int:
        """A distinct drop-path seed per block (in build order), from the network's ``drop_path_seed``."""
        self._blocks_made += 1
        return (self._drop_path_seed * 0x9E3779B1 + self._blocks_made * 0x85EBCA6B) & 0x7FFFFFFF

    def _down_twice(self, in_ch: int, mid_ch: int, out_ch: int) -> nn.SequentialCell:
        """Two strided 3x3 conv+BN with a ReLU between: /8 → /32 (names ``.0``, ``.1``, ``.3``, ``.4``)."""
        return nn.SequentialCell(
            [
                conv3x3(in_ch, mid_ch, 2, pad_mode=self._pad_mode),
                batch_norm(mid_ch),
                nn.ReLU(),
                conv3x3(mid_ch, out_ch, 2, pad_mode=self._pad_mode),
                batch_norm(out_ch),
            ]
        )

    def _fuse(self, low: Tensor, high: Tensor, down: nn.Cell, compression: nn.Cell) -> tuple[Tensor, Tensor]:
        """Bilateral fusion; both directions read the pre-fusion ``low`` and ``high``."""
        new_low = low + down(ops.relu(high))
        up = resize_bilinear_like(compression(ops.relu(low)), high, self.half_pixel_centers)
        return new_low, high + up

    def construct(self, x: Tensor) -> Tensor:
        x = self.layer1(self.conv1(x))
        l2 = ops.relu(self.layer2(ops.relu(x)))
        if self.split_layer3:
            x, x_ = self._fuse(self.layer3_1(l2), self.layer3_1_(l2), self.down3_1, self.compression3_1)
            x, x_ = self._fuse(
                self.layer3_2(ops.relu(x)), self.layer3_2_(ops.relu(x_)), self.down3_2, self.compression3_2
            )
        else:
            x, x_ = self._fuse(self.layer3(l2), self.layer3_(l2), self.down3, self.compression3)
        x, x_ = self._fuse(
            self.layer4(ops.relu(x)), self.layer4_(ops.relu(x_)), self.down4, self.compression4
        )
        x = self.layer5(ops.relu(x)) + self.down5(ops.relu(self.layer5_(ops.relu(x_))))
        x = self.last_layer(ops.relu(x))
        x = ops.mean(x, (2, 3), keep_dims=False)
        return self.linear(x)


def drop_path_schedule(layers: tuple[int, int, int, int], rate: float, mode: str = "zoo"
                       ) -> dict[str, list[float]]:
    """Per-block drop-path rates of every layer (``layer1``..``layer5``, ``layer3_``..``layer5_``) for
    ``mode`` (see the module docstring)."""
    n1, n2, n3, n4 = layers
    if mode == "branch":
        flat = np.linspace(0.0, rate, sum(layers) + 1).tolist()
        starts = np.cumsum([0, n1, n2, n3, n4]).tolist()
        low = [flat[a : a + n] for a, n in zip(starts, (n1, n2, n3, n4, 1), strict=True)]
        return {"layer1": low[0], "layer2": low[1], "layer3": low[2], "layer4": low[3], "layer5": low[4],
                "layer3_": low[2], "layer4_": low[3], "layer5_": low[4]}
    if mode != "zoo":
        raise ValueError(f"drop_path_mode must be one of {DROP_PATH_MODES}, got {mode!r}")
    flat = np.linspace(0.0, rate, sum(layers)).tolist()
    s2, s3, s4 = n1, n1 + n2, n1 + n2 + n3
    return {"layer1": flat[:s2], "layer2": flat[s2:s3], "layer3": flat[s3:s4], "layer4": flat[s4:],
            "layer5": [float(rate)], "layer3_": flat[s2 : s2 + n3], "layer4_": flat[s3 : s3 + n4],
            "layer5_": [float(rate)]}


def _build(arch: str, num_classes: int = 1000, drop_path_rate: float = 0.0, variant: str = "zoo",
           drop_path_mode: str = "zoo", drop_path_seed: int = 0) -> DDRNet:
    net = DDRNet(ARCHS[arch], num_classes=num_classes, drop_path_rate=drop_path_rate, variant=variant,
                 drop_path_mode=drop_path_mode, drop_path_seed=drop_path_seed)
    net.arch = arch
    return net


@register_model
def ddrnet23(**kwargs) -> DDRNet:
    """DDRNet-23: planes 64, 28.2 M parameters (authors' variant), ~3.9 GMACs at 224."""
    return _build("ddrnet23", **kwargs)


@register_model
def ddrnet23_slim(**kwargs) -> DDRNet:
    """DDRNet-23-slim: planes 32, 7.6 M parameters (authors' variant), ~1.0 GMACs at 224."""
    return _build("ddrnet23_slim", **kwargs)


@register_model
def ddrnet39(**kwargs) -> DDRNet:
    """DDRNet-39: [3, 4, 6, 3] blocks, layer3 in two fused groups, 40.1 M parameters, ~6.9 GMACs at 224."""
    return _build("ddrnet39", **kwargs)
