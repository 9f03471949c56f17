"""What DemP's penalty reaches in a model, with which weight, and its exact gradient
(docs/method.md, "The regulariser" and "The cost-aware penalty").

``Penalty`` is built from a model and its site costs (``demp.core.costs``) after every removal
(surgery replaces the parameters it shrinks, and costs change with the widths).  With target
``gates`` it holds the norm scales that gate a ReLU site, the BatchNorm (scale, shift) pairs for
the shift push, and the unit groups of sites no norm gates, each with its unit weight
(``cost ** cost_power``, mean 1); ``norm_scales`` and ``all_weights`` are the paper's form and
the ablation.  The math of each term is ``demp.core.regulariser``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import torch
import torch.nn as nn

from demp.core import regulariser
from demp.core.costs import SiteCost, unit_weights
from demp.core.utils import model_device


@dataclass(frozen=True)
class PenaltySettings:
    """The DemPConfig fields that shape the penalty."""
    form: str = "l1"
    target: str = "gates"
    weights: str = "uniform"
    cost_power: float = 1.0
    shift_push: float = 1.0
    silenced_below: float = 0.05


def _coeffs(lam: float, weights: torch.Tensor) -> torch.Tensor:
    """lambda x each term's unit weight, one float32 rounding (so gradients are exact)."""
    return (weights.double() * lam).to(torch.float32)


class Penalty:
    """The penalised parameters of one model, their weights, the penalty and its gradient.

    ``references`` holds, per ungated site, its mean unit norm when first seen (the bias push's
    yardstick); sites seen for the first time are added to it.
    """

    def __init__(self, model: nn.Module, costs: Mapping[str, SiteCost], settings: PenaltySettings,
                 references: dict[str, float]):
        self.settings = settings
        weights = unit_weights(costs, settings.weights, settings.cost_power)
        gate: dict[nn.Module, float] = {}
        groups: list[tuple[regulariser.UnitGroup, float]] = []
        for name, sc in costs.items():
            for m in sc.norms:
                gate[m] = max(gate.get(m, 0.0), weights.get(name, 1.0))
            if sc.producers and all(m.weight.requires_grad for m in sc.producers):
                group = regulariser.UnitGroup(sc.producers, sc.consumers)
                with torch.no_grad():
                    reference = references.setdefault(name, float(regulariser.unit_norms(group).mean()))
                groups.append((replace(group, reference=reference), weights.get(name, 1.0)))
        self.idle: list[str] = []      # norm layers that gate no unit (not penalised with 'gates')
        if settings.target == "gates":
            scales = {id(m.weight): (m.weight, w) for m, w in gate.items()
                      if isinstance(m.weight, nn.Parameter) and m.weight.requires_grad}
            self.scales = [p for p, _ in scales.values()]
            scale_weights = [w for _, w in scales.values()]
            self.groups = [g for g, _ in groups]
            group_weights = [w for _, w in groups]
            self.idle = [n for n, m in model.named_modules() if isinstance(m, regulariser.NORM_TYPES)
                         and m not in gate and isinstance(m.weight, nn.Parameter)]
        else:
            self.scales = regulariser.regularised_params(model, settings.target)
            scale_weights = [1.0] * len(self.scales)
            self.groups, group_weights = [], []
            gate = {m: 1.0 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        allowed = {id(g) for g, _ in regulariser.shift_pairs(model)}
        pairs = {id(m.weight): (m.weight, m.bias, w) for m, w in gate.items() if id(m.weight) in allowed}
        self.shift_pairs = [(g, b) for g, b, _ in pairs.values()]
        device = model_device(model)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64, device=device)  # noqa: E731
        self.scale_weights = as_tensor(scale_weights)
        self.shift_weights = as_tensor([w for _, _, w in pairs.values()])
        self.group_weights = as_tensor(group_weights)

    @property
    def empty(self) -> bool:
        """Nothing to penalise (no gating norm and no unit group)."""
        return not (self.scales or self.groups)

    @torch.no_grad()
    def gates(self) -> torch.Tensor:
        """What the penalty shrinks, one value per gate: |scale| of each penalised norm channel and
        each ungated unit's weight norm (how far the push has got; the shortfall diagnosis reads
        how much it moves between checks)."""
        parts = [p.detach().abs().flatten().float() for p in self.scales]
        parts += [regulariser.unit_norms(g).float() for g in self.groups]
        return torch.cat(parts).cpu() if parts else torch.zeros(0)

    def value(self, lam: float) -> torch.Tensor:
        """The penalty at strength ``lam``: weighted norm scales, shift push, unit groups."""
        s = self.settings
        total = regulariser.penalty(self.scales, s.form, _coeffs(lam, self.scale_weights))
        if s.shift_push and self.shift_pairs:
            coeffs = _coeffs(lam * s.shift_push, self.shift_weights)
            total = total + regulariser.shift_push(self.shift_pairs, s.silenced_below, coeffs)
        return total + self._group_terms(lam) if self.groups else total

    def _group_terms(self, lam: float) -> torch.Tensor:
        """The group L1 on the weights of ungated sites' units, and their bias push."""
        s = self.settings
        total = regulariser.group_penalty(self.groups, _coeffs(lam, self.group_weights))
        if s.shift_push:
            coeffs = _coeffs(lam * s.shift_push, self.group_weights)
            total = total + regulariser.bias_push(self.groups, s.silenced_below, coeffs)
        return total

    def grads(self, lam: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The parameters the penalty reaches and its gradient on each at strength ``lam``,
        bit-identical to what the loss's backward adds (the live mask of the noise relies on it)."""
        s = self.settings
        params = list(self.scales)
        grads = list(regulariser.penalty_grad(params, s.form, _coeffs(lam, self.scale_weights)))
        if s.shift_push and self.shift_pairs:
            params += [shift for _, shift in self.shift_pairs]
            grads += regulariser.shift_push_grad(self.shift_pairs, s.silenced_below,
                                                 _coeffs(lam * s.shift_push, self.shift_weights))
        if self.groups:
            reached = regulariser.group_params(self.groups)
            with torch.enable_grad():
                found = torch.autograd.grad(self._group_terms(lam), reached, allow_unused=True)
            params += reached
            grads += [torch.zeros_like(p) if g is None else g for p, g in zip(reached, found)]
        return params, grads
