"""Multi-layer perceptron on flattened images: the smallest model with ReLU units."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import LinearBNReLU, init_weights, scaled
from .registry import register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> BN1d -> ReLU] per hidden width -> Linear logits (``head``)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        widths = [in_features, *hidden]
        self.hidden = nn.Sequential(*(LinearBNReLU(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer (also re-drawn for a model trained from scratch)."""
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(x)))


@register_model("mlp")
def mlp(
    num_classes: int, in_channels: int, width: float, image_size: int, hidden: Sequence[int] = (256, 256)
) -> MLP:
    """MLP with hidden widths ``hidden`` scaled by ``width``."""
    if len(hidden) == 0:
        raise ValueError("mlp needs at least one hidden layer")
    return MLP(in_channels * image_size**2, [scaled(h, width) for h in hidden], num_classes)
