"""ResNet-18 (CIFAR stem) and ResNet-50 with skip paths that prune independently.

An identity shortcut is a ``ChannelSelect`` (a fixed 0/1 selection, docs/method.md "Structural removal"), so the
channels entering a block and the channels leaving it (after the addition and ``relu_out``)
lose units independently. Shape changes use a 1x1 conv + BN projection.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

import torch
import torch.nn as nn

from demp.core.skip import ChannelSelect
from .layers import init_weights, scaled
from .registry import register_model

Stem = Literal["cifar", "imagenet"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class Projection(nn.Sequential):
    """Projection shortcut: 1x1 conv (strided) + BN, used where the block changes shape."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv = conv1x1(in_ch, out_ch, stride)
        self.bn = nn.BatchNorm2d(out_ch)


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Projection where shape changes, else an identity ChannelSelect."""
    if stride != 1 or in_ch != out_ch:
        return Projection(in_ch, out_ch, stride)
    return ChannelSelect(in_ch)


class BasicBlock(nn.Module):
    """relu_out(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x)); two activation sites."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), + shortcut; three activation sites."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages of residual blocks, global average pool, ``head``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        planes: Sequence[int],
        num_classes: int,
        in_channels: int,
        stem_channels: int,
        stem: Stem = "cifar",
    ):
        super().__init__()
        self.stem = self._make_stem(in_channels, stem_channels, stem)
        prev = stem_channels
        stages: list[nn.Module] = []
        for i, (depth, stage_planes) in enumerate(zip(depths, planes)):
            strides = [1 if i == 0 else 2] + [1] * (depth - 1)
            blocks = []
            for stride in strides:
                blocks.append(block(prev, stage_planes, stride))
                prev = stage_planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(prev, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation; each Bottleneck starts as its shortcut (the paper's zero last-BN gamma)."""
        init_weights(self)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    @staticmethod
    def _make_stem(in_channels: int, out_ch: int, stem: Stem) -> nn.Sequential:
        """CIFAR stem (3x3 stride 1, no pool) or ImageNet stem (7x7 stride 2 + 3x3 max-pool)."""
        bn, relu = nn.BatchNorm2d(out_ch), nn.ReLU()
        if stem == "cifar":
            return nn.Sequential(OrderedDict(conv=conv3x3(in_channels, out_ch), bn=bn, relu=relu))
        if stem == "imagenet":
            conv = nn.Conv2d(in_channels, out_ch, 7, 2, 3, bias=False)
            return nn.Sequential(OrderedDict(conv=conv, bn=bn, relu=relu, pool=nn.MaxPool2d(3, 2, 1)))
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.flatten(self.pool(x)))


PLANES = (64, 128, 256, 512)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, width: float, image_size: int, stem: Stem = "cifar") -> ResNet:
    """CIFAR-style ResNet-18: BasicBlocks (2, 2, 2, 2), stage widths 64..512 scaled by ``width``."""
    planes = [scaled(p, width) for p in PLANES]
    return ResNet(BasicBlock, (2, 2, 2, 2), planes, num_classes, in_channels, scaled(64, width), stem)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, width: float, image_size: int, stem: Stem = "cifar") -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3), expansion 4, zero-initialised last BN gamma per block."""
    planes = [scaled(p, width) for p in PLANES]
    return ResNet(Bottleneck, (3, 4, 6, 3), planes, num_classes, in_channels, scaled(64, width), stem)
