"""Small helpers every layer shares: where a model lives, its size, and modes/buffers kept intact.

Dead checks, FLOP counts, baseline scoring and BatchNorm re-estimation all run a model in a
mode other than the caller's; these context managers put every submodule's own mode (and,
where asked, every buffer and the RNG) back exactly as they were.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def count_params(model: nn.Module) -> int:
    """Number of parameter entries, trainable or frozen, shared parameters counted once."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's own train/eval flag on exit (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside the block; each one's own mode restored after."""
    with kept_modes(model):
        model.eval()
        yield model


@contextmanager
def kept_buffers(model: nn.Module, rng: bool = False) -> Iterator[nn.Module]:
    """Restore every buffer (BatchNorm statistics, counters) on exit, and the RNG if ``rng``.

    For passes that must leave no trace: a train-mode FLOP count, saliency scoring.
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    dev = model_device(model)
    forked = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []) if rng else _nothing()
    with forked:
        try:
            yield model
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
