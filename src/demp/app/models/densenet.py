"""A tiny DenseNet (conv-BN-ReLU layers concatenated onto their input) to exercise torch.cat."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import ConvBNReLU, init_weights, scaled
from .registry import register_model


class DenseLayer(nn.Module):
    """cat([x, relu(bn(conv3x3(x)))], dim=1): adds ``growth`` channels to the stream."""

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.layer = ConvBNReLU(in_ch, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layer(x)], dim=1)


class Transition(nn.Sequential):
    """1x1 conv-BN-ReLU to ``out_ch`` channels, then 2x2 average pool."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, kernel=1)
        self.pool = nn.AvgPool2d(2)


class DenseNet(nn.Module):
    """Stem, dense blocks separated by transitions (halving channels), pool, ``head``."""

    def __init__(
        self, in_channels: int, stem: int, growth: int, block_layers: Sequence[int], num_classes: int
    ):
        super().__init__()
        self.stem = ConvBNReLU(in_channels, stem)
        stages: list[nn.Module] = []
        ch = stem
        for i, n_layers in enumerate(block_layers):
            if i > 0:
                stages.append(Transition(ch, max(1, ch // 2)))
                ch = max(1, ch // 2)
            stages.append(nn.Sequential(*(DenseLayer(ch + j * growth, growth) for j in range(n_layers))))
            ch += n_layers * growth
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(ch, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer (also re-drawn for a model trained from scratch)."""
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.features(self.stem(x)))))


@register_model("densenet_tiny")
def densenet_tiny(
    num_classes: int,
    in_channels: int,
    width: float,
    image_size: int,
    stem: int = 32,
    growth: int = 16,
    block_layers: Sequence[int] = (3, 3),
) -> DenseNet:
    """Tiny DenseNet: stem ``stem``, ``growth`` channels per layer, layers per dense block."""
    return DenseNet(in_channels, scaled(stem, width), scaled(growth, width), block_layers, num_classes)
