"""Test-only reference: the DDRNet authors' PyTorch ImageNet classifiers (DDRNet-23, -23-slim, -39),
ported from their public ``DDRNet_23_slim.py`` / ``DDRNet_23.py`` / ``DDRNet_39.py`` with plain torch ops
and ``F.interpolate(mode="bilinear")``. Independent of ``model/``: it is what our ``variant="authors"``
network is checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MOM = 0.1


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOM)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOM)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return out if self.no_relu else self.relu(out)


def _conv_bn(cin, cout, k, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout, momentum=BN_MOM),
    )


class DualResNet(nn.Module):
    def __init__(self, layers, num_classes=1000, planes=64, last_planes=2048, deep=False):
        super().__init__()
        hp = planes * 2
        self.deep = deep
        self.last_planes = last_planes
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(planes, momentum=BN_MOM),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(planes, momentum=BN_MOM),
            nn.ReLU(inplace=True),
        )
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = self._make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        if deep:
            self.layer3_1 = self._make_layer(BasicBlock, planes * 2, planes * 4, layers[2] // 2, stride=2)
            self.layer3_2 = self._make_layer(BasicBlock, planes * 4, planes * 4, layers[2] // 2)
        else:
            self.layer3 = self._make_layer(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        if deep:
            self.compression3_1 = _conv_bn(planes * 4, hp, 1)
            self.compression3_2 = _conv_bn(planes * 4, hp, 1)
        else:
            self.compression3 = _conv_bn(planes * 4, hp, 1)
        self.compression4 = _conv_bn(planes * 8, hp, 1)
        if deep:
            self.down3_1 = _conv_bn(hp, planes * 4, 3, 2)
            self.down3_2 = _conv_bn(hp, planes * 4, 3, 2)
        else:
            self.down3 = _conv_bn(hp, planes * 4, 3, 2)
        self.down4 = nn.Sequential(
            nn.Conv2d(hp, planes * 4, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(planes * 4, momentum=BN_MOM),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes * 4, planes * 8, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(planes * 8, momentum=BN_MOM),
        )
        if deep:
            self.layer3_1_ = self._make_layer(BasicBlock, planes * 2, hp, layers[2] // 2)
            self.layer3_2_ = self._make_layer(BasicBlock, hp, hp, layers[2] // 2)
        else:
            self.layer3_ = self._make_layer(BasicBlock, planes * 2, hp, 2)
        self.layer4_ = self._make_layer(BasicBlock, hp, hp, layers[3])
        self.layer5_ = self._make_layer(Bottleneck, hp, hp, 1)
        self.down5 = nn.Sequential(
            nn.Conv2d(planes * 4, planes * 8, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(planes * 8, momentum=BN_MOM),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes * 8, planes * 16, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(planes * 16, momentum=BN_MOM),
        )
        self.layer5 = self._make_layer(Bottleneck, planes * 8, planes * 8, 1)
        self.last_layer = nn.Sequential(
            nn.Conv2d(planes * 16, last_planes, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(last_planes, momentum=BN_MOM),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.linear = nn.Linear(last_planes, num_classes)

    @staticmethod
    def _make_layer(block, inplanes, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOM),
            )
        mods = [block(inplanes, planes, stride, downsample)]
        inplanes = planes * block.expansion
        for i in range(1, blocks):
            mods.append(block(inplanes, planes, stride=1, no_relu=(i == blocks - 1)))
        return nn.Sequential(*mods)

    def _up(self, t, size):
        return F.interpolate(t, size=size, mode="bilinear")

    def forward(self, x):
        size = [x.shape[-2] // 8, x.shape[-1] // 8]
        outs = []
        x = self.layer1(self.conv1(x))
        outs.append(x)
        x = self.layer2(self.relu(x))
        outs.append(x)
        if self.deep:
            x = self.layer3_1(self.relu(x))
            outs.append(x)
            x_ = self.layer3_1_(self.relu(outs[1]))
            x = x + self.down3_1(self.relu(x_))
            x_ = x_ + self._up(self.compression3_1(self.relu(outs[2])), size)
            x = self.layer3_2(self.relu(x))
            outs.append(x)
            x_ = self.layer3_2_(self.relu(x_))
            x = x + self.down3_2(self.relu(x_))
            x_ = x_ + self._up(self.compression3_2(self.relu(outs[3])), size)
        else:
            x = self.layer3(self.relu(x))
            outs.append(x)
            x_ = self.layer3_(self.relu(outs[1]))
            x = x + self.down3(self.relu(x_))
            x_ = x_ + self._up(self.compression3(self.relu(outs[2])), size)
        x = self.layer4(self.relu(x))
        low4 = x
        x_ = self.layer4_(self.relu(x_))
        x = x + self.down4(self.relu(x_))
        x_ = x_ + self._up(self.compression4(self.relu(low4)), size)
        x = self.layer5(self.relu(x)) + self.down5(self.relu(self.layer5_(self.relu(x_))))
        x = self.last_layer(self.relu(x))
        x = x.view(-1, self.last_planes)
        return self.linear(x)


def build(arch: str, num_classes: int = 1000) -> DualResNet:
    """The authors' network for ``ddrnet23``, ``ddrnet23_slim`` or ``ddrnet39``."""
    if arch == "ddrnet23_slim":
        return DualResNet([2, 2, 2, 2], num_classes, planes=32, last_planes=1024)
    if arch == "ddrnet23":
        return DualResNet([2, 2, 2, 2], num_classes, planes=64, last_planes=2048)
    if arch == "ddrnet39":
        return DualResNet([3, 4, 6, 3], num_classes, planes=64, last_planes=2048, deep=True)
    raise ValueError(arch)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with BN statistics far from identity, so a mis-mapped BN tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=gen))
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * mod.in_features**-0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
    return net.eval()
