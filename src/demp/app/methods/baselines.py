"""Structured pruning baselines (spec section 7), each a training method with real removal.

Every baseline scores the units of every ReLU site (as ``detection`` finds them), ranks them
globally across sites (``select_lowest``) and physically removes the lowest-scored ones with
``remove_units(..., exact=False)``, optimizer state included, until ``config.target`` of the
units the network started with are gone.  Logits are never units; each site keeps its
``config.min_units`` best-scored units.  Amounts are cumulative counts of the original
units, so a removal event that falls short (coupled units, width constraints) is made up by
the next; units that only go together (an expansion conv and the depthwise conv it feeds)
share their mean score, and an event re-scores and prunes again up to ``MAX_PASSES`` times
before it warns about a shortfall.

Methods (``MethodConfig.name``) and their exact rules:

- ``snap`` / ``cropit``: before training (in ``setup``), ``config.rounds`` rounds back to
  back; each round re-scores the current (shrunk) network and removes units until the
  cumulative fraction ``1 - (1 - target) ** (r / rounds)`` is gone (a geometric schedule:
  every round removes the same share of the units still there, as SNIP-it does).
  SNAP scores ``|dL/dc|`` and CroP-it-S ``|(H g)_c|`` for a gate ``c = 1`` multiplying each
  unit's output, where ``L`` is the loss summed over ``config.score_batches`` training
  batches (the gradient is accumulated over the batches before the absolute value, as the
  SNIP-it and GraSP code do), ``g = dL/dc`` and ``H`` the Hessian of that same ``L``
  with respect to the gates.  CroP-it-S uses the magnitude, so the sign of ``H g``
  does not matter: units whose removal changes the gradient flow least go first
  (preserving the flow, unlike GraSP's signed score that tries to increase it).
- ``earlysnap`` / ``earlycrop``: the same rounds and scores, once, at the first epoch end
  where ``early_trigger`` fires on r_t = ||theta_t - theta_0|| / ||theta_0|| (theta: every
  parameter; theta_0 taken at ``setup``).  If it never fires, ``finish`` prunes (with a
  warning) so that the final network still meets the target.
- ``slimming``: ``config.slimming_reg * sum |gamma|`` over normalisation scales added to the
  loss until ``prune_at`` of training, then the units with the smallest ``|gamma|`` (summed
  over the norm layers tied to the unit) go in one event, and training continues
  without the penalty (the fine-tuning phase of network slimming).  Units without a norm
  layer are never removed.
- ``magnitude``: ``config.prune_steps`` events evenly spaced after ``prune_start`` up to
  ``prune_end`` (fractions of training; the last event is at ``prune_end``); event k
  removes up to ``cubic_fraction`` (Zhu & Gupta) of the original units.  A unit's score is
  the L2 norm of its incoming weights: the rows of every conv/linear layer that produces
  its channel (found through the site's torch-pruning group; biases are not counted).
- ``random``: the times and amounts of ``magnitude``, uniform random scores drawn from a
  generator seeded with ``MethodContext.seed``.

Scores are computed in train mode (batch statistics, as the training loss sees them) with
dropout off and every buffer restored, so scoring changes nothing in the model.  The
scheduled methods (``slimming``, ``magnitude``, ``random``) count optimizer steps
themselves and ``finish`` applies any event the run did not reach.

Resuming: call ``load_state_dict`` before ``setup`` (``snap`` and ``cropit`` prune in
``setup`` unless the loaded state says they already did); the other methods accept either
order.  Until it fires, an early method's state holds theta_0 (a copy of the parameters).
"""
from __future__ import annotations

import math
import warnings
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
from demp.app.methods.base import Method, MethodConfig, MethodContext, register_method
from demp.core.surgery import RemovalReport, SiteRemoval, build_graph, remove_units

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
            root = nodes[name].module
            pruner = dg.get_pruner_of_module(root)
            for item in dg.get_pruning_group(root, pruner.prune_out_channels, list(range(width))):
                m = _Member(item.dep.target.module, dg.is_out_channel_pruning_fn(item.dep.handler),
                            node_site.get(item.dep.target),
                            torch.as_tensor(list(item.idxs), dtype=torch.long),
                            torch.as_tensor(list(item.root_idxs), dtype=torch.long))
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


# ----------------------------------------------------------------------------- selection and timing

def _check_target(target: float) -> None:
    """Refuse a target that is not a fraction of units strictly between 0 and 1."""
    if not 0 < target < 1:
        raise DempError(f"target must be the fraction of units to remove, in (0, 1), got {target}")


def select_lowest(scores: Mapping[str, torch.Tensor], fraction: float, min_units: int = 1) -> dict[str, torch.Tensor]:
    """Mark the ``round(fraction * units)`` lowest-scored units globally (True = remove).

    Each site's ``min_units`` best-scored units and every +inf score are protected; the
    lowest-scored unprotected units are marked (fewer only when too few are unprotected).
    """
    if not 0 <= fraction <= 1:
        raise DempError(f"fraction must be in [0, 1], got {fraction}")
    if min_units < 1:
        raise DempError(f"min_units must be >= 1 (a layer may never reach zero width), got {min_units}")
    flat, protected = [], []
    for name, s in scores.items():
        s = torch.as_tensor(s).detach().double().flatten().cpu()
        if torch.isnan(s).any():
            raise DempError(f"scores of site '{name}' contain NaN (did training diverge?)")
        keep = torch.isinf(s) & (s > 0)
        keep[s.topk(min(min_units, s.numel())).indices] = True
        flat.append(s)
        protected.append(keep)
    all_scores, all_protected = torch.cat(flat), torch.cat(protected)
    k = round(fraction * all_scores.numel())
    candidates = (~all_protected).nonzero().flatten()
    chosen = candidates[torch.argsort(all_scores[candidates], stable=True)[:k]]
    marks = torch.zeros(all_scores.numel(), dtype=torch.bool)
    marks[chosen] = True
    return dict(zip(scores, marks.split([s.numel() for s in flat])))


def round_fraction(r: int, rounds: int, target: float) -> float:
    """Cumulative fraction removed after round r of ``rounds``: 1 - (1 - target)^(r / rounds)."""
    return 1 - (1 - target) ** (r / rounds)


def cubic_fraction(step: float, start: float, end: float, target: float) -> float:
    """Zhu & Gupta's cubic schedule: 0 at ``start``, ``target`` from ``end`` on."""
    if end <= start:
        raise DempError(f"the cubic schedule needs start < end, got start={start}, end={end}")
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    return target * (1 - (1 - progress) ** 3)


def early_trigger(history: Sequence[float], target: float) -> bool:
    """EarlySNAP/EarlyCroP rule on the newest epoch of r_t = ||theta_t - theta_0|| / ||theta_0||.

    True when the relative change (r_t - r_{t-1}) / r_{t-1} is positive and below
    1 - target density, where target density = 1 - target (so the bound is ``target``).
    Needs two epochs with r_{t-1} > 0 (a change from 0 is not finite).
    """
    _check_target(target)
    if len(history) < 2 or history[-2] <= 0:
        return False
    change = (history[-1] - history[-2]) / history[-2]
    density = 1 - target
    return 0 < change < 1 - density


def relative_distance(params: Sequence[torch.Tensor], start: Sequence[torch.Tensor], start_norm: float) -> float:
    """||theta - theta_0|| / ||theta_0|| over matching parameter lists."""
    if len(params) != len(start) or any(p.shape != q.shape for p, q in zip(params, start)):
        raise DempError("the model's parameters changed shape since theta_0 was taken; the "
                        "early trigger must run before any removal")
    sq = sum(float((p.detach().double() - q.double()).pow(2).sum()) for p, q in zip(params, start))
    return math.sqrt(sq) / start_norm


def merge_reports(reports: Sequence[Optional[RemovalReport]]) -> Optional[RemovalReport]:
    """One report for consecutive removal events (widths before the first, after the last)."""
    done = [r for r in reports if r is not None]
    if not done:
        return None
    sites: dict[str, SiteRemoval] = {}
    for r in done:
        for name, s in r.sites.items():
            acc = sites.setdefault(name, SiteRemoval(s.width_before))
            acc.removed += s.removed
            acc.dead += s.dead
            acc.kept_dead += s.kept_dead
            for reason, n in s.reasons.items():
                acc.reasons[reason] = acc.reasons.get(reason, 0) + n
    return RemovalReport(units_before=done[0].units_before,
                         units_removed=sum(r.units_removed for r in done),
                         params_before=done[0].params_before, params_after=done[-1].params_after,
                         sites=sites, seconds=sum(r.seconds for r in done))


# ----------------------------------------------------------------------------- methods

def _require(checks: Sequence[tuple[bool, str]]) -> None:
    """Raise DempError with the first failed check's message."""
    for ok, message in checks:
        if not ok:
            raise DempError(message)


class _PruningMethod(Method):
    """Removes the lowest-scored units globally; subclasses say how to score and when."""

    MAX_PASSES = 4

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        _check_target(config.target)
        _require(self._checks())
        self.units0: Optional[int] = None   # units before any removal

    def _checks(self) -> list[tuple[bool, str]]:
        return [(self.config.min_units >= 1, f"min_units must be >= 1, got {self.config.min_units}")]

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        super().setup(ctx)
        if self.units0 is None:
            self.units0 = sum(s.width for s in list_sites(ctx.model, ctx.example_inputs))
        return None

    def score(self) -> Scores:
        """Scores of the current network's units (higher = more important)."""
        raise NotImplementedError

    def prune_to(self, fraction: float) -> Optional[RemovalReport]:
        """Remove the lowest-scored units until ``fraction`` of the original units are gone.

        Coupled units share their score; when width or group constraints keep marked units,
        the network is re-scored and pruned again (``MAX_PASSES`` in all), then a shortfall
        is reported with a warning.
        """
        ctx, reports, missing = self.ctx, [], 0
        for _ in range(self.MAX_PASSES):
            scores = self.score()
            now = sum(s.numel() for s in scores.values())
            missing = round(fraction * self.units0) - (self.units0 - now)
            if missing <= 0:
                break
            marks = select_lowest(share_coupled(scores, ctx.model, ctx.example_inputs),
                                  missing / now, self.config.min_units)
            if not any(bool(m.any()) for m in marks.values()):
                break
            report = remove_units(ctx.model, marks, ctx.example_inputs, ctx.optimizer,
                                  min_units=self.config.min_units, exact=False)
            reports.append(report)
            missing -= report.units_removed
            if report.units_removed == 0:
                break
        if missing > 0 and round(fraction * self.units0) == round(self.config.target * self.units0):
            warnings.warn(f"{self.name}: {missing} units short of removing {fraction:.3g} of "
                          f"the {self.units0} units (minimum widths, coupled or unscorable "
                          "units)", stacklevel=2)
        return merge_reports(reports)

    def state_dict(self) -> dict:
        return {"units0": self.units0}

    def load_state_dict(self, state: dict) -> None:
        self.units0 = state["units0"]


class _GateMethod(_PruningMethod):
    """Gate scores, in geometric rounds, before training or at the early-trigger epoch."""

    score_fn: Callable[[nn.Module, Iterable[Batch], LossFn], Scores]
    early = False

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.done = False
        self.history: list[float] = []
        self.theta0: Optional[list[torch.Tensor]] = None
        self.norm0 = 0.0

    def _checks(self) -> list[tuple[bool, str]]:
        c = self.config
        return super()._checks() + [(c.rounds >= 1, f"rounds must be >= 1, got {c.rounds}"),
                                    (c.score_batches >= 1, f"score_batches must be >= 1, got {c.score_batches}")]

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        super().setup(ctx)
        if self.done:
            return None
        if not self.early:
            return self._prune()
        if self.theta0 is None:
            self.theta0 = [p.detach().clone() for p in ctx.model.parameters()]
            self.norm0 = math.sqrt(sum(float(p.double().pow(2).sum()) for p in self.theta0))
            if self.norm0 == 0:
                raise DempError("all parameters are zero at setup, so ||theta_0|| = 0 and the "
                                "early trigger is undefined; initialise the model first")
        return None

    def score(self) -> Scores:
        return self.score_fn(self.ctx.model, self.ctx.train_batches(self.config.score_batches),
                             self.ctx.loss_fn)

    def _prune(self) -> Optional[RemovalReport]:
        """All rounds back to back, each re-scoring the shrunk network; then never again."""
        self.done, self.theta0 = True, None
        c = self.config
        return merge_reports([self.prune_to(round_fraction(r, c.rounds, c.target))
                              for r in range(1, c.rounds + 1)])

    def on_epoch_end(self, epoch: int) -> Optional[RemovalReport]:
        if not self.early or self.done:
            return None
        self.history.append(relative_distance(list(self.ctx.model.parameters()), self.theta0, self.norm0))
        return self._prune() if early_trigger(self.history, self.config.target) else None

    def finish(self) -> Optional[RemovalReport]:
        if self.done:
            return None
        warnings.warn(f"{self.name}: the early trigger never fired in {len(self.history)} epochs; "
                      "pruning at the end of training instead", stacklevel=2)
        return self._prune()

    def state_dict(self) -> dict:
        state = super().state_dict() | {"done": self.done, "history": list(self.history)}
        if self.early and not self.done:
            state |= {"theta0": self.theta0, "norm0": self.norm0}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.done, self.history = bool(state["done"]), list(state["history"])
        if "theta0" in state:
            self.theta0, self.norm0 = state["theta0"], float(state["norm0"])


@register_method
class SNAP(_GateMethod):
    """Structured SNIP: |dL/dc| on unit gates, before training."""
    name = "snap"
    score_fn = staticmethod(gate_saliency)


@register_method
class CroPItS(_GateMethod):
    """CroP-it-S: |(H g)_c| on unit gates, before training."""
    name = "cropit"
    score_fn = staticmethod(crop_saliency)


@register_method
class EarlySNAP(SNAP):
    """SNAP's score at the early-trigger epoch."""
    name = "earlysnap"
    early = True


@register_method
class EarlyCroP(CroPItS):
    """CroP-it-S's score at the early-trigger epoch."""
    name = "earlycrop"
    early = True


class _ScheduledMethod(_PruningMethod):
    """Removal events at planned optimizer steps, each up to a cumulative fraction."""

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.steps_done = 0
        self.events_done = 0
        self.plan: list[tuple[int, float]] = []

    def events(self) -> list[tuple[float, float]]:
        """(fraction of training, cumulative fraction of units removed) of every event."""
        raise NotImplementedError

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        super().setup(ctx)
        self.plan = [(max(1, round(at * ctx.total_steps)), frac) for at, frac in self.events()]
        return None

    def after_step(self, step: int, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        self.steps_done += 1
        due = [frac for at, frac in self.plan[self.events_done:] if at <= self.steps_done]
        if not due:
            return None
        self.events_done += len(due)
        return self.prune_to(due[-1])

    def finish(self) -> Optional[RemovalReport]:
        if self.events_done >= len(self.plan):
            return None
        self.events_done = len(self.plan)
        return self.prune_to(self.plan[-1][1])

    def state_dict(self) -> dict:
        return super().state_dict() | {"steps_done": self.steps_done, "events_done": self.events_done}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps_done, self.events_done = int(state["steps_done"]), int(state["events_done"])


@register_method
class Slimming(_ScheduledMethod):
    """Network slimming: L1 on norm scales, then remove the smallest |gamma| at ``prune_at``."""
    name = "slimming"

    def _checks(self) -> list[tuple[bool, str]]:
        c = self.config
        return super()._checks() + [
            (c.slimming_reg >= 0, f"slimming_reg must be >= 0, got {c.slimming_reg}"),
            (0 < c.prune_at <= 1, f"prune_at must be a fraction of training in (0, 1], got {c.prune_at}")]

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        if not regulariser.norm_scale_params(ctx.model):
            raise DempError(f"slimming prunes by normalisation scales, but {type(ctx.model).__name__} "
                            "has no BatchNorm/GroupNorm/LayerNorm with a weight; use 'magnitude'")
        return super().setup(ctx)

    def events(self) -> list[tuple[float, float]]:
        return [(self.config.prune_at, self.config.target)]

    def penalty(self) -> torch.Tensor | float:
        if self.events_done or self.config.slimming_reg == 0:
            return 0.0
        scales = regulariser.norm_scale_params(self.ctx.model)
        return self.config.slimming_reg * regulariser.penalty(scales, "l1")

    def score(self) -> Scores:
        return norm_scale_magnitudes(self.ctx.model, self.ctx.example_inputs)


@register_method
class Magnitude(_ScheduledMethod):
    """Gradual structured magnitude pruning on a cubic schedule (Zhu & Gupta)."""
    name = "magnitude"

    def _checks(self) -> list[tuple[bool, str]]:
        c = self.config
        return super()._checks() + [
            (0 <= c.prune_start < c.prune_end <= 1,
             f"need 0 <= prune_start < prune_end <= 1, got {c.prune_start} and {c.prune_end}"),
            (c.prune_steps >= 1, f"prune_steps must be >= 1, got {c.prune_steps}")]

    def events(self) -> list[tuple[float, float]]:
        c = self.config
        times = [c.prune_start + k * (c.prune_end - c.prune_start) / c.prune_steps
                 for k in range(1, c.prune_steps + 1)]
        return [(t, cubic_fraction(t, c.prune_start, c.prune_end, c.target)) for t in times]

    def score(self) -> Scores:
        return incoming_weight_norms(self.ctx.model, self.ctx.example_inputs)


@register_method
class RandomPruning(Magnitude):
    """Random units at magnitude pruning's times and amounts (seeded)."""
    name = "random"

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.generator = torch.Generator()
        self._seeded = False

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        super().setup(ctx)
        if not self._seeded:
            self.generator.manual_seed(ctx.seed)
            self._seeded = True
        return None

    def score(self) -> Scores:
        return random_scores(self.ctx.model, self.ctx.example_inputs, self.generator)

    def state_dict(self) -> dict:
        return super().state_dict() | {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["rng"])
        self._seeded = True
