"""The residual skip path as a fixed 0/1 channel selection (docs/method.md, "Structural removal").

An identity shortcut ties the channels entering a residual block to the channels leaving
it, so a dead unit could only be removed when it is dead everywhere in the residual stream.
`ChannelSelect` replaces the identity by a selection matrix kept as two index buffers
(input channel ``src[k]`` is added to output channel ``dst[k]``), so the block's input and
output channels can lose units independently.  It starts as the identity.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from demp.core.tp_compat import BasePruningFunc


class _SelectFn(torch.autograd.Function):
    """out[:, dst] = x[:, src]; other output channels are zero.

    One autograd node, so dependency tracing sees the selection as a single layer.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, out_channels: int):
        ctx.save_for_backward(src, dst)
        ctx.in_channels = x.shape[1]
        picked = x.index_select(1, src)
        if dst.numel() == out_channels:  # every output channel has a source, dst is arange
            return picked
        out = x.new_zeros((x.shape[0], out_channels) + tuple(x.shape[2:]))
        return out.index_copy_(1, dst, picked)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        src, dst = ctx.saved_tensors
        shape = (grad.shape[0], ctx.in_channels) + tuple(grad.shape[2:])
        grad_x = grad.new_zeros(shape).index_copy_(1, src, grad.index_select(1, dst))
        return grad_x, None, None, None


class ChannelSelect(nn.Module):
    """Fixed 0/1 selection from ``in_channels`` to ``out_channels`` along dim 1."""

    def __init__(self, channels: int):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"ChannelSelect needs channels >= 1, got {channels}")
        self.in_channels = channels
        self.out_channels = channels
        self.register_buffer("src", torch.arange(channels))
        self.register_buffer("dst", torch.arange(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            return self._plain_forward(x)
        return _SelectFn.apply(x, self.src, self.dst, self.out_channels)

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same selection in plain tensor ops (a zero channel and a gather), for export."""
        slot = torch.full((self.out_channels,), self.src.numel(), dtype=torch.long, device=x.device)
        slot[self.dst] = torch.arange(self.src.numel(), device=x.device)
        padded = torch.cat([x.index_select(1, self.src), x[:, :1] * 0], dim=1)
        return padded.index_select(1, slot)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, pairs={self.src.numel()}"

    def _drop(self, side: str, idxs: Sequence[int]) -> None:
        """Drop channels ``idxs`` on one side and renumber both index buffers."""
        removed = torch.as_tensor(sorted(idxs), dtype=torch.long, device=self.src.device)
        own = self.src if side == "in" else self.dst
        keep = ~torch.isin(own, removed)
        src, dst = self.src[keep], self.dst[keep]
        shift = torch.searchsorted(removed, own[keep])  # channels removed below each index
        if side == "in":
            src = src - shift
            self.in_channels -= len(removed)
        else:
            dst = dst - shift
            self.out_channels -= len(removed)
        self.src, self.dst = src.contiguous(), dst.contiguous()


class ChannelSelectPruner(BasePruningFunc):
    """torch-pruning handler: input and output sides of the selection prune independently."""

    TARGET_MODULES = (ChannelSelect,)

    def prune_out_channels(self, layer: ChannelSelect, idxs: Sequence[int]) -> ChannelSelect:
        layer._drop("out", idxs)
        return layer

    def prune_in_channels(self, layer: ChannelSelect, idxs: Sequence[int]) -> ChannelSelect:
        layer._drop("in", idxs)
        return layer

    def get_out_channels(self, layer: ChannelSelect) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelSelect) -> int:
        return layer.in_channels
