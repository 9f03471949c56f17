"""A tiny MobileNetV2 (ReLU instead of ReLU6) to exercise depthwise convs and residual adds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .layers import ConvBNReLU, init_weights, scaled
from .registry import register_model


@dataclass(frozen=True)
class StageCfg:
    """One stage of inverted residual blocks: expansion factor, output width, repeats, stride."""

    expand: int
    out: int
    repeats: int
    stride: int


TINY_STAGES: tuple[StageCfg, ...] = (
    StageCfg(expand=2, out=16, repeats=1, stride=1),
    StageCfg(expand=4, out=24, repeats=2, stride=2),
    StageCfg(expand=4, out=32, repeats=2, stride=2),
    StageCfg(expand=4, out=64, repeats=2, stride=2),
)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU -> 3x3 depthwise-BN-ReLU -> 1x1 project-BN, + x when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, stride: int):
        super().__init__()
        hidden = in_ch * expand
        self.expand = ConvBNReLU(in_ch, hidden, kernel=1)
        self.depthwise = ConvBNReLU(hidden, hidden, kernel=3, stride=stride, groups=hidden)
        self.project = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.project(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual stages, 1x1 conv-BN-ReLU, global average pool, ``head``."""

    def __init__(
        self, in_channels: int, stem: int, stages: Sequence[StageCfg], last: int, num_classes: int
    ):
        super().__init__()
        self.stem = ConvBNReLU(in_channels, stem)
        blocks: list[nn.Module] = []
        prev = stem
        for cfg in stages:
            for i in range(cfg.repeats):
                blocks.append(InvertedResidual(prev, cfg.out, cfg.expand, cfg.stride if i == 0 else 1))
                prev = cfg.out
        self.blocks = nn.Sequential(*blocks)
        self.last = ConvBNReLU(prev, last, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(last, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer (also re-drawn for a model trained from scratch)."""
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.head(self.flatten(self.pool(x)))


@register_model("mobilenetv2_tiny")
def mobilenetv2_tiny(
    num_classes: int, in_channels: int, width: float, image_size: int, stem: int = 16, last: int = 256
) -> MobileNetV2:
    """Tiny MobileNetV2 for 32x32 inputs: stride-1 stem, stages 16/24/32/64, last conv ``last``."""
    stages = [StageCfg(s.expand, scaled(s.out, width), s.repeats, s.stride) for s in TINY_STAGES]
    return MobileNetV2(in_channels, scaled(stem, width), stages, scaled(last, width), num_classes)
