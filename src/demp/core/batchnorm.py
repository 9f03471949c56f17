"""Fresh BatchNorm statistics for dead checks and for the final network.

While the penalty shrinks the norm scales, BatchNorm's running averages (momentum 0.1) lag
behind the network, and an eval-mode dead check then sees units as dead that are alive in
training.  ``recalibrated`` re-estimates every running statistic from a few batches (train
mode, cumulative average, no gradient, dropout off), yields, and puts back the trained
statistics, momentum and counters, so the re-estimate serves the check and nothing else.
This "adaptive BatchNorm" step is established pruning practice (EagleEye, ECCV 2020).

The same lag can ruin the final network's eval-mode accuracy (a plain loop with a constant
learning rate: 0.17-0.28 in eval mode against 0.99 with batch statistics); ``choose_statistics``
keeps whichever statistics serve the probe better, the trained or freshly re-estimated ones.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from demp.core.detection import batch_input, call_model, main_output
from demp.core.utils import eval_mode, kept_buffers, kept_modes


def stat_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Normalisation layers that keep running statistics (BatchNorm 1d/2d/3d, SyncBatchNorm)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any]) -> int:
    """Replace every running statistic by its average over ``batches``; returns batches used.

    ``batches``: input tensors or (input, target) pairs, training-like (e.g. a few augmented
    training batches).  Leaves the new statistics in the model and momentum as it was; modes
    are restored.  (``torch.optim.swa_utils.update_bn`` does the same for plain-tensor loaders.)
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
        yield recalibrate_bn(model, batches)
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if count is not None:
                    m.num_batches_tracked.copy_(count)


@dataclass
class StatisticsChoice:
    """Which BatchNorm statistics ``choose_statistics`` kept, and the probe criterion of each."""
    kept: str                  # "trained" | "re-estimated" | "none" (no BatchNorm statistics)
    criterion: str             # "loss" (probe targets) | "kl_to_batch_stats" (inputs only)
    trained: Optional[float] = None
    reestimated: Optional[float] = None


def _targets(batch: Any) -> Optional[torch.Tensor]:
    """The target of an (input, target) batch; None for a bare input."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


@torch.no_grad()
def _probe_criterion(model: nn.Module, batches: list, loss_fn: Callable, references: Optional[list]) -> float:
    """Mean eval-mode loss on the probe, or mean KL to the batch-statistics outputs."""
    total = 0.0
    with eval_mode(model):
        for i, batch in enumerate(batches):
            out = main_output(call_model(model, batch_input(batch))).float()
            if references is None:
                total += float(loss_fn(out, _targets(batch)))
            else:
                total += float(F.kl_div(out.log_softmax(-1), references[i], reduction="batchmean", log_target=True))
    return total / max(1, len(batches))


@torch.no_grad()
def _batch_stat_outputs(model: nn.Module, batches: list) -> list[torch.Tensor]:
    """Log-probabilities with each batch normalised by its own statistics (dropout off)."""
    with kept_modes(model), kept_buffers(model):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        return [main_output(call_model(model, batch_input(b))).float().log_softmax(-1) for b in batches]


def choose_statistics(model: nn.Module, probe: Iterable[Any], calibration: Iterable[Any],
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
                      ) -> StatisticsChoice:
    """Keep the BatchNorm statistics that serve the probe better: the trained running averages,
    or new ones re-estimated on ``calibration``.

    With (input, target) probe batches the criterion is ``loss_fn`` in eval mode; with bare
    inputs it is the KL divergence from the outputs under batch statistics (what training saw).
    The model is left with the statistics chosen.
    """
    layers = stat_layers(model)
    probe = list(probe)
    labelled = all(_targets(b) is not None for b in probe)
    criterion = "loss" if labelled else "kl_to_batch_stats"
    if not layers or not probe:
        return StatisticsChoice("none", criterion)
    references = None if labelled else _batch_stat_outputs(model, probe)
    trained = _probe_criterion(model, probe, loss_fn, references)
    with recalibrated(model, calibration):
        fresh = _probe_criterion(model, probe, loss_fn, references)
        new = [[t.clone() for t in (m.running_mean, m.running_var, m.num_batches_tracked) if t is not None]
               for m in layers]
    if not fresh < trained:
        return StatisticsChoice("trained", criterion, trained, fresh)
    with torch.no_grad():
        for m, values in zip(layers, new):
            for t, v in zip([t for t in (m.running_mean, m.running_var, m.num_batches_tracked) if t is not None], values):
                t.copy_(v)
    return StatisticsChoice("re-estimated", criterion, trained, fresh)
