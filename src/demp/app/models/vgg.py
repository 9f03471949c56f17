"""VGG-16-BN as in the DemP protocol: five conv blocks, two hidden BN FC layers, logits."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import ConvBNReLU, LinearBNReLU, init_weights, pooled_size, scaled
from .registry import register_model

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)


class VGG(nn.Module):
    """Conv blocks each ending in a 2x2 max-pool, a real flatten, hidden FC layers, ``head``."""

    def __init__(
        self,
        in_channels: int,
        blocks: Sequence[Sequence[int]],
        hidden: Sequence[int],
        num_classes: int,
        image_size: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for block in blocks:
            for ch in block:
                layers.append(ConvBNReLU(prev, ch))
                prev = ch
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = pooled_size(image_size, len(blocks))
        if side < 1:
            raise ValueError(f"image_size {image_size} too small for {len(blocks)} max-pools (need >= 32)")
        self.flatten = nn.Flatten()  # final map is side x side: 1x1 at 32, 2x2 at 64
        widths = [prev * side * side, *hidden]
        self.classifier = nn.Sequential(*(LinearBNReLU(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer (also re-drawn for a model trained from scratch)."""
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.flatten(self.features(x))))


@register_model("vgg16_bn")
def vgg16_bn(
    num_classes: int, in_channels: int, width: float, image_size: int, hidden: Sequence[int] = (512, 512)
) -> VGG:
    """VGG-16-BN (13 convs) with hidden FC widths ``hidden``; all widths scaled by ``width``."""
    blocks = [[scaled(c, width) for c in block] for block in VGG16_BLOCKS]
    return VGG(in_channels, blocks, [scaled(h, width) for h in hidden], num_classes, image_size)
