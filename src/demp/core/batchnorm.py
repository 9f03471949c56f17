"""Fresh BatchNorm statistics for dead checks (and, optionally, evaluation).

While the penalty shrinks the norm scales, BatchNorm's running averages (momentum 0.1) lag
behind the network, and an eval-mode dead check then sees units as dead that are alive in
training.  ``recalibrated`` re-estimates every running statistic from a few batches (train
mode, cumulative average, no gradient, dropout off), yields, and puts back the trained
statistics, momentum and counters, so the re-estimate serves the check and nothing else.
This "adaptive BatchNorm" step is established pruning practice (EagleEye, ECCV 2020).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

from demp.core.detection import batch_input, call_model
from demp.core.utils import kept_modes


def stat_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Normalisation layers that keep running statistics (BatchNorm 1d/2d/3d, SyncBatchNorm)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def reestimate(model: nn.Module, batches: Iterable[Any]) -> int:
    """Replace every running statistic by its average over ``batches``; returns batches used.

    Leaves the new statistics in the model and momentum as it was; modes are restored.
    """
    layers = stat_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    n = 0
    with kept_modes(model):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None          # cumulative moving average over the batches
        try:
            for batch in batches:
                call_model(model, batch_input(batch))
                n += 1
        finally:
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum
    return n


@contextmanager
def recalibrated(model: nn.Module, batches: Iterable[Any]) -> Iterator[int]:
    """Statistics re-estimated on ``batches`` inside the block; the trained ones restored after."""
    layers = stat_layers(model)
    saved = [(m, m.running_mean.clone(), m.running_var.clone(),
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    try:
        yield reestimate(model, batches)
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if count is not None:
                    m.num_batches_tracked.copy_(count)
