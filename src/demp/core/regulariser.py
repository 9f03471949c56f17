"""The sparsity penalty DemP adds to the task loss (docs/method.md, "The regulariser").

The published method uses ``l1`` on normalisation scales (BatchNorm/LayerNorm/GroupNorm
weights, ``norm_scales``); demp's default ``gates`` penalises only the scales that gate a ReLU
site, and where no norm gates a site, the rows of the layer producing it (a group L1, the
``row_*`` functions); the other forms and the ``all_weights`` target serve the ablations.  Besides the
penalty itself, ``penalty_grad`` gives its exact gradient so that callers can remove the
penalty's share from ``p.grad`` and see which entries got gradient from the task loss alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from demp.core.tp_compat import transposed_linear_types

REG_FORMS = ("l1", "l2", "l1_pos", "l2_pos")
REG_TARGETS = ("gates", "norm_scales", "all_weights")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise ValueError naming the bad choice and the valid ones."""
    if value not in valid:
        raise ValueError(f"unknown regulariser {name} {value!r}; choose one of {valid}")


def _unique_trainable(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable parameters in first-seen order, each once (shared modules appear once)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def norm_scale_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable scale (weight) parameters of every BatchNorm*, LayerNorm and GroupNorm."""
    scales = [
        m.weight
        for m in model.modules()
        if isinstance(m, NORM_TYPES) and isinstance(m.weight, nn.Parameter)
    ]
    return _unique_trainable(scales)


def regularised_params(model: nn.Module, target: str) -> list[nn.Parameter]:
    """The parameters the penalty applies to: every norm scale, or all matrices/kernels plus
    them (``gates`` depends on the graph: ``demp.core.costs`` and the pruner decide it)."""
    _check("target", target, REG_TARGETS)
    scales = norm_scale_params(model)
    if target in ("gates", "norm_scales"):
        return scales
    scale_ids = {id(p) for p in scales}
    return _unique_trainable([p for p in model.parameters() if p.dim() > 1 or id(p) in scale_ids])


Coeffs = Optional[torch.Tensor]
"""Per-parameter factors of a weighted penalty (lambda times each parameter's unit weight), a
1-D tensor; None: every parameter counts once."""


def penalty(params: list[torch.Tensor], form: str, coeffs: Coeffs = None) -> torch.Tensor:
    """Sum of the elementwise penalty over every entry of ``params`` (a 0-dim tensor), each
    parameter's sum times its factor in ``coeffs``."""
    _check("form", form, REG_FORMS)
    if not params:
        return torch.zeros(())
    if form == "l1":
        per_tensor = torch._foreach_norm(params, 1)  # sum |p|, one fused call
    else:
        base = params if form == "l2" else [torch.relu(p) for p in params]
        elementwise = base if form == "l1_pos" else torch._foreach_pow(base, 2)
        per_tensor = [e.sum() for e in elementwise]
    stacked = torch.stack(per_tensor)
    return (stacked if coeffs is None else stacked * coeffs).sum()


def penalty_grad(params: list[torch.Tensor], form: str, scale: float | torch.Tensor) -> list[torch.Tensor]:
    """Gradient of ``scale * penalty(params, form)`` (``scale`` a float), or of
    ``penalty(params, form, coeffs=scale)`` (a tensor), bit-identical to what autograd gives.

    The subgradient at 0 is 0 for every form (torch's abs' and relu' at 0).
    """
    _check("form", form, REG_FORMS)
    if not params:
        return []
    factors = list(scale.unbind()) if isinstance(scale, torch.Tensor) else [scale] * len(params)
    with torch.no_grad():
        if form == "l1":
            signs = torch._foreach_sign(params)
            if not isinstance(scale, torch.Tensor):
                return torch._foreach_mul(signs, scale)
            return [s * f for s, f in zip(signs, factors)]
        if form == "l1_pos":
            grads = [torch.zeros_like(p).add_(f) for p, f in zip(params, factors)]
        else:  # same operation order as autograd's pow backward: scale * (2 * p)
            grads = [(2.0 * p) * f for p, f in zip(params, factors)]
        if form != "l2":
            for g, p in zip(grads, params):
                g.masked_fill_(p <= 0, 0.0)  # relu passes no gradient at or below 0
        return grads


# ---------------------------------------------------------------- the shift push (demp's addition)
# An L1 penalty drives a unit's scale to zero, but a BatchNorm unit with scale 0 and a positive
# shift outputs the constant relu(shift): it is silenced, not dead, and no dead check can
# remove it.  On VGG-16-BN/CIFAR-10 such units were 17% of all units at the end of budgeted
# runs.  The push adds lambda * shift to the loss for every silenced unit (scale below
# ``below`` times the largest scale of its layer), which walks the shift down until the unit
# is dead; a constant input is mostly absorbed by the next normalisation, so this costs little.
# docs/method.md, "Where demp departs".

def shift_pairs(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(scale, shift) of every BatchNorm with trainable affine parameters."""
    return [(m.weight, m.bias) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and isinstance(m.weight, nn.Parameter) and isinstance(m.bias, nn.Parameter)
            and m.weight.requires_grad and m.bias.requires_grad and m.weight.numel() > 1]


@torch.no_grad()
def silenced(scale: torch.Tensor, below: float) -> torch.Tensor:
    """Mask of units whose scale is below ``below`` times the largest |scale| of the layer."""
    mag = scale.detach().abs()
    return mag < below * mag.max()


def shift_push(pairs: list[tuple[nn.Parameter, nn.Parameter]], below: float,
               coeffs: Coeffs = None) -> torch.Tensor:
    """Sum of the shifts of the silenced units, each pair's sum times its factor in ``coeffs``
    (a 0-dim tensor; its gradient is the mask times the factor)."""
    terms = [(shift * silenced(scale, below)).sum() for scale, shift in pairs]
    if not terms:
        return torch.zeros(())
    stacked = torch.stack(terms)
    return (stacked if coeffs is None else stacked * coeffs).sum()


@torch.no_grad()
def shift_push_grad(pairs: list[tuple[nn.Parameter, nn.Parameter]], below: float,
                    scale: float | torch.Tensor) -> list[torch.Tensor]:
    """Gradient of ``scale * shift_push(pairs, below)`` (a float), or of
    ``shift_push(pairs, below, coeffs=scale)`` (a tensor), for each pair's shift."""
    factors = list(scale.unbind()) if isinstance(scale, torch.Tensor) else [scale] * len(pairs)
    return [silenced(gamma, below).to(shift.dtype) * f for (gamma, shift), f in zip(pairs, factors)]



# ---------------------------------------------------------------- units no norm gates
# Where no norm gates a ReLU site (a transformer FFN, a convolution without norm) the penalty is
# a group L1 over each unit's own weights: its row (and bias) in every layer producing it and its
# column in every layer reading it.  Rows alone would not do: shrinking them while the reading
# layer grows leaves the function unchanged (seen on an FFN: every row shrank 300x, no unit
# died).  A unit near zero outputs the constant relu(bias); the bias push walks the bias of such
# silenced units down until they are dead, like the shift push.  The gradients of these terms
# come from autograd (``torch.autograd.grad`` on them alone), bit-identical to what the loss's
# backward adds.

_GROUP_EPS = 1e-16
"""Inside the square root of a unit's norm, so its gradient stays finite at all-zero weights."""


@dataclass(frozen=True)
class UnitGroup:
    """The layers holding the weights of one ungated site's units."""
    producers: tuple[nn.Module, ...]       # output channel c is unit c
    consumers: tuple[nn.Module, ...] = ()  # input channel c is unit c
    reference: float = 0.0                 # the site's mean unit norm when first seen (bias push)


def unit_rows(m: nn.Module, consumer: bool) -> torch.Tensor:
    """A layer's weights with one row per unit: its output channels (a producer) or input
    channels (a consumer).  A transposed-weight linear layer (GPT-2's Conv1D) holds them swapped."""
    w = m.weight.t() if isinstance(m, transposed_linear_types()) else m.weight
    return (w.transpose(0, 1) if consumer else w).flatten(1)


def unit_norms(group: UnitGroup) -> torch.Tensor:
    """L2 norm of each unit's weights: producer rows and biases, consumer columns."""
    squares = None
    for m in group.producers:
        sq = unit_rows(m, consumer=False).pow(2).sum(1)
        if m.bias is not None:
            sq = sq + m.bias.pow(2)
        squares = sq if squares is None else squares + sq
    for m in group.consumers:
        squares = squares + unit_rows(m, consumer=True).pow(2).sum(1)
    return (squares + _GROUP_EPS).sqrt()


def group_penalty(groups: list[UnitGroup], coeffs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of ``coeffs[i]`` times the sum of its unit norms (a 0-dim tensor)."""
    if not groups:
        return torch.zeros(())
    return (torch.stack([unit_norms(g).sum() for g in groups]) * coeffs).sum()


def bias_push(groups: list[UnitGroup], below: float, coeffs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of ``coeffs[i]`` times the producer biases of its silenced units (norm
    below ``below`` times the group's reference norm)."""
    terms = []
    for g, c in zip(groups, coeffs.unbind()):
        quiet = unit_norms(g).detach() < below * g.reference
        terms += [(m.bias * quiet).sum() * c for m in g.producers if m.bias is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def group_params(groups: list[UnitGroup]) -> list[nn.Parameter]:
    """The parameters the unit groups reach (each once)."""
    seen, out = set(), []
    for g in groups:
        for m in (*g.producers, *g.consumers):
            for p in (m.weight, m.bias if m in g.producers else None):
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out
