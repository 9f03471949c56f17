"""An in-memory dataset as the loaders and the cache see it (``Splits``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Splits:
    """An in-memory dataset: uint8 images, int64 labels, class names and train-set statistics."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        """Reject malformed arrays early, where the mistake is made rather than in training."""
        for x, y, part in ((self.train_x, self.train_y, "train"), (self.test_x, self.test_y, "test")):
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{part}_x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{part}_y must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels (1 for Fashion-MNIST, 3 for CIFAR-10)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image side in pixels (the in-memory datasets have square images)."""
        return int(self.train_x.shape[2])


# ----------------------------------------------------------------------------- statistics
