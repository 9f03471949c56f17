"""Small CNN for the Fashion-MNIST main job: three conv stages and one hidden FC layer."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import ConvBNReLU, LinearBNReLU, init_weights, pooled_size, scaled
from .registry import register_model


class SmallCNN(nn.Module):
    """[conv-BN-ReLU -> maxpool] per stage -> flatten -> Linear-BN1d-ReLU -> ``head``."""

    def __init__(
        self, in_channels: int, channels: Sequence[int], hidden: int, num_classes: int, image_size: int
    ):
        super().__init__()
        stages: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            stages += [ConvBNReLU(prev, ch), nn.MaxPool2d(2)]
            prev = ch
        self.features = nn.Sequential(*stages)
        side = pooled_size(image_size, len(channels))
        if side < 1:
            raise ValueError(f"image_size {image_size} too small for {len(channels)} pooling stages")
        self.flatten = nn.Flatten()  # real flatten: each channel feeds side*side inputs of fc
        self.fc = LinearBNReLU(prev * side * side, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer (also re-drawn for a model trained from scratch)."""
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.flatten(self.features(x))))


@register_model("small_cnn")
def small_cnn(
    num_classes: int,
    in_channels: int,
    width: float,
    image_size: int,
    channels: Sequence[int] = (32, 64, 128),
    hidden: int = 256,
) -> SmallCNN:
    """SmallCNN with stage widths ``channels`` and FC width ``hidden``, scaled by ``width``."""
    return SmallCNN(
        in_channels, [scaled(c, width) for c in channels], scaled(hidden, width), num_classes, image_size
    )
