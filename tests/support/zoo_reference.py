"""Test-only reference: the MindSpore model zoo's DDRNet-23 (``research/cv/DDRNet/src/models/ddrnet23.py``)
ported to MindSpore 2.10 with the zoo's own ops: ``nn.Conv2d``'s default ``pad_mode="same"`` and the
legacy ``ResizeBilinearV2(align_corners=False, half_pixel_centers=False)`` to a fixed ``image_size // 8``.
Independent of ``model/``: it is what our ``variant="zoo"`` network is checked against. It cannot be
exported to ONNX (the resize op), which does not matter for a test. Eval only (no drop path).
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.no_relu = no_relu

    def construct(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        if self.no_relu:
            return out
        return self.relu(out)


class Bottleneck(nn.Cell):
    expansion = 2

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=0.1)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.no_relu = no_relu

    def construct(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        if self.no_relu:
            return out
        return self.relu(out)


class ZooDualResNet(nn.Cell):
    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, planes=64, last_planes=2048, image_size=224):
        super().__init__()
        hp = planes * 2
        self.conv1 = nn.SequentialCell(
            [
                nn.Conv2d(3, planes, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes),
                nn.ReLU(),
                nn.Conv2d(planes, planes, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes),
                nn.ReLU(),
            ]
        )
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = self._make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression3 = nn.SequentialCell([nn.Conv2d(planes * 4, hp, kernel_size=1), nn.BatchNorm2d(hp)])
        self.compression4 = nn.SequentialCell([nn.Conv2d(planes * 8, hp, kernel_size=1), nn.BatchNorm2d(hp)])
        self.down3 = nn.SequentialCell(
            [nn.Conv2d(hp, planes * 4, kernel_size=3, stride=2), nn.BatchNorm2d(planes * 4)]
        )
        self.down4 = nn.SequentialCell(
            [
                nn.Conv2d(hp, planes * 4, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes * 4),
                nn.ReLU(),
                nn.Conv2d(planes * 4, planes * 8, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes * 8),
            ]
        )
        self.layer3_ = self._make_layer(BasicBlock, planes * 2, hp, 2)
        self.layer4_ = self._make_layer(BasicBlock, hp, hp, 2)
        self.layer5_ = self._make_layer(Bottleneck, hp, hp, 1)
        self.down5 = nn.SequentialCell(
            [
                nn.Conv2d(planes * 4, planes * 8, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes * 8),
                nn.ReLU(),
                nn.Conv2d(planes * 8, planes * 16, kernel_size=3, stride=2),
                nn.BatchNorm2d(planes * 16),
            ]
        )
        self.layer5 = self._make_layer(Bottleneck, planes * 8, planes * 8, 1)
        self.last_layer = nn.SequentialCell(
            [
                nn.Conv2d(planes * 16, last_planes, kernel_size=1, stride=1),
                nn.BatchNorm2d(last_planes),
                nn.ReLU(),
            ]
        )
        self.pool = ops.ReduceMean(False)
        self.linear = nn.Dense(last_planes, num_classes)
        self.out_size = (image_size // 8, image_size // 8)
        self.resize = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=False)

    @staticmethod
    def _make_layer(block, inplanes, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.SequentialCell(
                [
                    nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride),
                    nn.BatchNorm2d(planes * block.expansion),
                ]
            )
        cells = [block(inplanes, planes, stride, downsample)]
        inplanes = planes * block.expansion
        for i in range(1, blocks):
            cells.append(block(inplanes, planes, stride=1, no_relu=(i == blocks - 1)))
        return nn.SequentialCell(cells)

    def construct(self, x):
        x = self.conv1(x)
        x = self.layer1(x)
        layer2_out = self.layer2(self.relu(x))
        layer3_out = self.layer3(self.relu(layer2_out))
        x_ = self.layer3_(self.relu(layer2_out))
        x = layer3_out + self.down3(self.relu(x_))
        x_ = x_ + self.resize(self.compression3(self.relu(layer3_out)), self.out_size)
        layer4_out = self.layer4(self.relu(x))
        x_ = self.layer4_(self.relu(x_))
        x = layer4_out + self.down4(self.relu(x_))
        x_ = x_ + self.resize(self.compression4(self.relu(layer4_out)), self.out_size)
        x = self.layer5(self.relu(x)) + self.down5(self.relu(self.layer5_(self.relu(x_))))
        x = self.last_layer(self.relu(x))
        x = self.pool(x, (2, 3))
        return self.linear(x)


def randomize(net: nn.Cell, seed: int = 0) -> nn.Cell:
    """Random weights with BN statistics far from identity, so a mis-loaded BN tensor shows."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf == "gamma" or leaf == "moving_variance":
            value = 0.5 + rng.random(shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            value = rng.standard_normal(shape) * 0.1
        elif len(shape) == 4:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        p.set_data(Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net
