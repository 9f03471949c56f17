"""Measured FLOP and parameter counts for the reported metrics (spec section 8).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add counts as 2
FLOPs, and only matrix products, convolutions and attention are counted.  Biases,
normalisation, activations, pooling and other elementwise work add nothing, so a
``Linear(10, 5)`` costs 2*10*5 = 100 FLOPs per example with or without its bias.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def _counted(run: Callable[[], object]) -> int:
    """FLOPs executed by ``run()``."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's own train/eval flag on exit (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def _state_kept(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restore buffers (BatchNorm running stats) and the RNG that a train-mode pass consumes."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Inference FLOPs for one example (``example[:1]``), in eval mode without autograd."""
    with _modes_kept(model), torch.no_grad():
        model.eval()
        return _counted(lambda: model(example[:1]))


def train_step_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward+backward FLOPs per example in train mode, leaving the model exactly as found.

    Two examples are run (BatchNorm1d cannot train on one) and the count is halved; the
    counted ops are linear in the batch size.  Gradients go through ``torch.autograd.grad``,
    so ``.grad`` fields are never touched, and only trainable parameters get gradients, as
    in a real step.  Modes, buffers and the RNG state are restored afterwards.
    """
    batch = example[:2]
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        out = model(batch)
        if out.requires_grad:
            torch.autograd.grad(out, params, torch.ones_like(out), allow_unused=True)

    with _modes_kept(model), _state_kept(model, example.device):
        model.train()
        return _counted(step) // len(batch)


def count_params(model: nn.Module) -> int:
    """Number of parameter entries, trainable or frozen, shared parameters counted once."""
    return sum(p.numel() for p in model.parameters())
