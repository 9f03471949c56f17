"""A tiny pre-LN Vision Transformer whose FFN hidden units are ReLU units."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import init_weights, scaled
from .registry import register_model


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (B, N, dim) via a strided conv."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FeedForward(nn.Module):
    """Linear -> ReLU -> Linear; the ``hidden`` features after ``act`` are the prunable units."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding + learned positions, pre-LN blocks, final LayerNorm, token mean, ``head``."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_hidden: int,
        num_classes: int,
    ):
        super().__init__()
        if image_size % patch != 0:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer, and learned positions drawn with std 0.02."""
        init_weights(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x) + self.pos_embed)
        return self.head(self.norm(x).mean(dim=1))


@register_model("vit_tiny")
def vit_tiny(
    num_classes: int,
    in_channels: int,
    width: float,
    image_size: int,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    patch: int = 4,
) -> ViT:
    """Tiny ViT; ``dim`` is scaled by ``width`` per head so it stays divisible by ``heads``."""
    if dim % heads != 0:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    head_dim = scaled(dim // heads, width)
    scaled_dim = head_dim * heads
    mlp_hidden = max(1, round(scaled_dim * mlp_ratio))
    return ViT(in_channels, image_size, patch, scaled_dim, depth, heads, mlp_hidden, num_classes)
