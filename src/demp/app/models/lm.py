"""A small byte-level language model: a pre-LN causal decoder whose FFN hidden units are ReLU units.

Inputs are int64 byte sequences (B, T) with T at most ``context``; outputs are next-byte
logits (B, T, vocab).  The FFN is ViT's ``FeedForward`` (Linear -> ReLU -> Linear), so its
hidden features are the units DemP finds dead and removes; nothing else has a ReLU.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import init_weights, scaled
from .registry import register_model
from .vit import FeedForward


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and the positions before it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DecoderBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ReluLM(nn.Module):
    """Token embedding + learned positions, pre-LN decoder blocks, final LayerNorm, ``head``.

    With ``tied`` the head shares the embedding's weight (no head bias).
    """

    def __init__(self, vocab: int, context: int, dim: int, depth: int, heads: int, mlp_hidden: int,
                 tied: bool = False):
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.Sequential(*(DecoderBlock(dim, heads, mlp_hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=not tied)
        if tied:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The zoo's initialisation of every layer, then embeddings and learned positions drawn
        with std 0.02 (what ``scratch`` calls to start a pruned architecture afresh)."""
        init_weights(self)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{type(self).__name__} reads integer byte sequences (B, T), got "
                             f"{x.dtype} {tuple(x.shape)}; train it on data.name=text")
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context}")
        h = self.blocks(self.embed(x) + self.pos_embed[:, :t])
        return self.head(self.norm(h))


@register_model("relu_lm")
def relu_lm(
    num_classes: int,
    in_channels: int,
    width: float,
    image_size: int,
    context: Optional[int] = None,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    tied: bool = False,
) -> ReluLM:
    """Byte-level decoder; ``num_classes`` is the vocabulary (256 bytes), ``context`` the longest
    sequence (the run passes data.context); ``dim`` is scaled by ``width`` per head, as in ViT.
    ``in_channels`` and ``image_size`` are the registry's image arguments and are not used."""
    if context is None or context < 1:
        raise ValueError(f"relu_lm needs the sequence length context >= 1 (got {context}); "
                         "train it on data.name=text, which passes data.context")
    if dim % heads != 0:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    scaled_dim = scaled(dim // heads, width) * heads
    mlp_hidden = max(1, round(scaled_dim * mlp_ratio))
    return ReluLM(num_classes, context, scaled_dim, depth, heads, mlp_hidden, tied)
