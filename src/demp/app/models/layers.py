"""Shared building blocks: width scaling, conv-BN-ReLU, weight initialisation."""
from __future__ import annotations

import torch.nn as nn


def scaled(base: int, width: float) -> int:
    """Channel count for a base width at a width multiplier (never below one unit)."""
    return max(1, round(base * width))


def pooled_size(size: int, pools: int) -> int:
    """Spatial size after ``pools`` 2x2 stride-2 pools (floor), as nn.MaxPool2d(2) gives."""
    for _ in range(pools):
        size //= 2
    return size


class ConvBNReLU(nn.Sequential):
    """conv -> BatchNorm -> ReLU; the ReLU output is one activation site (a unit per channel)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()


class LinearBNReLU(nn.Sequential):
    """Linear -> BatchNorm1d -> ReLU hidden layer (one unit per output feature)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU()


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs, unit-scale zero-shift norms; Linear keeps its default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
