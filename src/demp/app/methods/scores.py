"""Importance scores of units for the baselines (higher = more important).

Gate scores put a multiplicative gate c = 1 on every ReLU site's output and differentiate
the training loss with respect to it: SNAP's |dL/dc| (structured SNIP) and CroP-it-S's
|(H g)_c| (gradient-flow preservation, GraSP-like).  Weight scores read the layers that
produce a unit through its torch-pruning group: the L2 norm of the incoming weights
(magnitude pruning) and |gamma| of its norm layers (network slimming).  Scoring runs in
train mode with dropout off and leaves no trace in the model.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from demp.core import regulariser
from demp.core.detection import SiteTracer, call_model, list_sites
from demp.core.utils import kept_buffers, kept_modes, model_device
from demp.errors import DempError
from demp.core.surgery import build_graph
from demp.core.tp_compat import is_out_channel_fn, pruning_group

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- gate scores

@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode with dropout off, modes and buffers restored: scoring leaves no trace."""
    with kept_modes(model), kept_buffers(model):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        yield model


def _batches(model: nn.Module, batches: Iterable[Batch]) -> list[Batch]:
    """The (input, target) batches as a list on the model's device (they are read twice)."""
    dev = model_device(model)
    out = [(x.to(dev), y.to(dev)) for x, y in batches]
    if not out:
        raise DempError("scoring needs at least one (input, target) training batch")
    return out


def _gates(model: nn.Module, x: torch.Tensor,
           values: Optional[Mapping[str, torch.Tensor]] = None) -> tuple[list[str], list[torch.Tensor]]:
    """Site names in call order and a leaf gate per site (ones unless ``values`` are given)."""
    sites = list_sites(model, x)
    dtype = next(model.parameters()).dtype
    dev = model_device(model)
    gates = []
    for s in sites:
        v = torch.ones(s.width) if values is None else torch.as_tensor(values[s.name])
        gates.append(v.detach().to(dev, dtype).clone().requires_grad_(True))
    return [s.name for s in sites], gates


def gated_forward(model: nn.Module, x: Any, gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Forward pass with every ReLU site's output multiplied by its gate (one per unit)."""
    def on_site(call, out):
        if call.index >= len(gates) or gates[call.index].numel() != out.shape[call.channel_dim]:
            raise DempError("the model's ReLU calls differ from the gates' sites; the forward "
                            "pass must make the same ReLU calls on every batch")
        shape = [1] * out.dim()
        shape[call.channel_dim] = -1
        return out * gates[call.index].view(shape)

    with SiteTracer(model, on_site):
        return call_model(model, x)


def _grad(outputs: Sequence[torch.Tensor], gates: list[torch.Tensor], **kw: Any) -> list[torch.Tensor]:
    """Gradient of ``outputs`` w.r.t. the gates, zeros for gates they do not depend on."""
    return list(torch.autograd.grad(outputs, gates, allow_unused=True, materialize_grads=True, **kw))


def gate_gradient(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn,
                  gates: Optional[Mapping[str, torch.Tensor]] = None) -> Scores:
    """dL/dc per unit, L = loss summed over the batches, gates c at 1 unless ``gates`` given."""
    data = _batches(model, batches)
    names, values = _gates(model, data[0][0], gates)
    total = [torch.zeros_like(v) for v in values]
    with scoring_mode(model):
        for x, y in data:
            grads = _grad([loss_fn(gated_forward(model, x, values), y)], values)
            total = [t + g for t, g in zip(total, grads)]
    return {n: t.detach() for n, t in zip(names, total)}


def gate_hessian_gradient(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> Scores:
    """H g per unit at gates c = 1: g = dL/dc and H = d2L/dc2 of the summed loss (double backward)."""
    data = _batches(model, batches)
    g = gate_gradient(model, data, loss_fn)
    names, values = _gates(model, data[0][0])
    vector = [g[n].to(v.dtype) for n, v in zip(names, values)]
    total = [torch.zeros_like(v) for v in values]
    with scoring_mode(model), sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward
        for x, y in data:
            grads = _grad([loss_fn(gated_forward(model, x, values), y)], values, create_graph=True)
            linked = [(gr, v) for gr, v in zip(grads, vector) if gr.requires_grad]
            if not linked:
                continue
            hg = _grad([gr for gr, _ in linked], values, grad_outputs=[v for _, v in linked])
            total = [t + h for t, h in zip(total, hg)]
    return {n: t.detach() for n, t in zip(names, total)}


def gate_saliency(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> Scores:
    """SNAP's score |dL/dc| (structured SNIP)."""
    return {n: g.abs() for n, g in gate_gradient(model, batches, loss_fn).items()}


def crop_saliency(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> Scores:
    """CroP-it-S's score |(H g)_c| (gradient-flow preservation)."""
    return {n: h.abs() for n, h in gate_hessian_gradient(model, batches, loss_fn).items()}


# ----------------------------------------------------------------------------- weight scores

@dataclass(frozen=True)
class _Member:
    """One layer or site in a site's torch-pruning group: its channels ``idxs`` map to ``root``."""
    module: nn.Module
    produces: bool          # removal shrinks its output channels (a producer of the units)
    site: Optional[str]     # the site it is, if any
    idxs: torch.Tensor
    root: torch.Tensor


def site_groups(model: nn.Module, example: Any) -> dict[str, tuple[int, list[_Member]]]:
    """Each site's width and the members of the group removal would shrink with its units.

    Built from torch-pruning's dependency graph, the same groups ``remove_units`` prunes; a
    site whose output does not reach the model output has no members.  Members whose
    indices exceed their width are left out (torch-pruning 1.6.1 takes a grouped conv with
    one output per group for a depthwise one and ties its input channels to its outputs).
    """
    dg, nodes, widths = build_graph(model, example)
    node_site = {node: name for name, node in nodes.items()}
    groups: dict[str, tuple[int, list[_Member]]] = {}
    for name, width in widths.items():
        members = []
        if name in nodes:
            for item in pruning_group(dg, nodes[name].module, range(width)):
                m = _Member(item.node.module, is_out_channel_fn(dg, item.handler), node_site.get(item.node),
                            torch.as_tensor(item.idxs, dtype=torch.long),
                            torch.as_tensor(item.root_idxs, dtype=torch.long))
                if m.site is None or int(m.idxs.max()) < widths[m.site]:
                    members.append(m)
        groups[name] = (width, members)
    return groups


def _producer_sums(model: nn.Module, example: Any,
                   channel_values: Callable[[nn.Module], Optional[torch.Tensor]]) -> Scores:
    """Per site, ``channel_values`` of every layer producing its channels, summed per unit.

    The producers are the out-channel members of the site's group (the conv/linear and norm
    layers removal shrinks with the unit).  Units without a producer get +inf: never selected.
    """
    out: Scores = {}
    for name, (width, members) in site_groups(model, example).items():
        total = torch.zeros(width, dtype=torch.float64)
        found = torch.zeros(width, dtype=torch.bool)
        for m in members:
            values = channel_values(m.module) if m.produces else None
            if values is not None and int(m.idxs.max()) < len(values):
                total.index_add_(0, m.root, values.detach().double().cpu()[m.idxs])
                found[m.root] = True
        out[name] = total.masked_fill(~found, math.inf)
    return out


def share_coupled(scores: Mapping[str, torch.Tensor], model: nn.Module, example: Any) -> Scores:
    """Give coupled units (sites in one group, removed only together) their mean score.

    E.g. an expansion conv's units and the depthwise units they feed: ranked as one, so the
    marks agree and the group is removed.  Uncoupled sites keep their scores.
    """
    out = {n: torch.as_tensor(s).detach().double().cpu().clone() for n, s in scores.items()}
    for width, members in site_groups(model, example).values():
        sites = [m for m in members if m.site is not None]
        if len(sites) < 2:
            continue
        total = torch.zeros(width, dtype=torch.float64)
        count = torch.zeros(width, dtype=torch.float64)
        for m in sites:
            total.index_add_(0, m.root, out[m.site][m.idxs])
            count.index_add_(0, m.root, torch.ones(len(m.idxs), dtype=torch.float64))
        mean = total / count.clamp_min(1)
        for m in sites:
            out[m.site][m.idxs] = mean[m.root]
    return out


def _weight_row_sq(module: nn.Module) -> Optional[torch.Tensor]:
    """Squared L2 norm of each output unit's incoming weights (conv or linear), else None."""
    if isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd)
                                         and not module.transposed):
        return module.weight.detach().flatten(1).pow(2).sum(1)
    return None


def _norm_scale_abs(module: nn.Module) -> Optional[torch.Tensor]:
    """|gamma| of a normalisation layer with a scale parameter, else None."""
    if isinstance(module, regulariser.NORM_TYPES) and isinstance(module.weight, nn.Parameter):
        return module.weight.detach().abs()
    return None


def incoming_weight_norms(model: nn.Module, example: Any) -> Scores:
    """Magnitude score: L2 norm of each unit's incoming weights over all its producing layers."""
    return {n: s.sqrt() for n, s in _producer_sums(model, example, _weight_row_sq).items()}


def norm_scale_magnitudes(model: nn.Module, example: Any) -> Scores:
    """Slimming score: |gamma| of each unit, summed over the norm layers tied to it."""
    return _producer_sums(model, example, _norm_scale_abs)


def random_scores(model: nn.Module, example: Any, generator: torch.Generator) -> Scores:
    """Uniform random scores for every unit, drawn from ``generator`` in site order."""
    return {s.name: torch.rand(s.width, generator=generator, dtype=torch.float64)
            for s in list_sites(model, example)}


