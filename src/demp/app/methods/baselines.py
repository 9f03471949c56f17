"""Structured pruning baselines (docs/method.md, "Baselines"), each a training method with real removal.

Every baseline scores the units of every ReLU site (as ``detection`` finds them), ranks them
globally across sites (``select_lowest``) and physically removes the lowest-scored ones with
``remove_units(..., exact=False)``, optimizer state included, until ``config.target`` of the
units the network started with are gone.  Logits are never units; each site keeps its
``config.min_units`` best-scored units.  Amounts are cumulative counts of the original
units, so a removal event that falls short (coupled units, width constraints) is made up by
the next; units that only go together (an expansion conv and the depthwise conv it feeds)
share their mean score, and an event re-scores and prunes again up to ``MAX_PASSES`` times
before it warns about a shortfall.

Methods (``method.name``) and their exact rules; scores live in ``scores``, selection and
timing in ``selection``, settings in the dataclasses below:

- ``snap`` / ``cropit``: before training (in ``on_train_start``), ``config.rounds`` rounds back to
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

Resuming follows the hook order (setup, load_state_dict, on_train_start): ``snap`` and
``cropit`` prune in ``on_train_start`` unless the loaded state says they already did.  Until
it fires, an early method's state holds theta_0 (a copy of the parameters).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from demp.app.methods.base import Method, MethodContext, register_method
from demp.app.methods.scores import (Batch, LossFn, Scores, crop_saliency, gate_saliency,
                                     incoming_weight_norms, norm_scale_magnitudes, random_scores,
                                     share_coupled)
from demp.app.methods.selection import (cubic_fraction, early_trigger, merge_reports, relative_distance,
                                        round_fraction, select_lowest)
from demp.core import regulariser
from demp.core.detection import list_sites
from demp.core.surgery import RemovalReport, remove_units
from demp.errors import DempError


# ----------------------------------------------------------------------------- settings

def _require(checks: Sequence[tuple[bool, str]]) -> None:
    """Raise DempError with the first failed check's message."""
    for ok, message in checks:
        if not ok:
            raise DempError(message)


@dataclass
class PruningConfig:
    """Settings every baseline shares: how much to remove, and the width floor."""
    target: float = 0.5             # fraction of units to remove
    min_units: int = 1              # never prune a site below this width

    def checks(self) -> list[tuple[bool, str]]:
        return [(0 < self.target < 1, f"target must be the fraction of units to remove, in (0, 1), got {self.target}"),
                (self.min_units >= 1, f"min_units must be >= 1, got {self.min_units}")]

    def validate(self):
        _require(self.checks())
        return self


@dataclass
class GateConfig(PruningConfig):
    """SNAP, CroP-it-S and their early variants."""
    rounds: int = 5                 # pruning rounds
    score_batches: int = 4          # training batches for saliency scores

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
                                   (self.score_batches >= 1, f"score_batches must be >= 1, got {self.score_batches}")]


@dataclass
class SlimmingConfig(PruningConfig):
    """Network slimming."""
    slimming_reg: float = 1e-4      # L1 on norm scales until prune_at
    prune_at: float = 0.5           # fraction of training at which to prune

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.slimming_reg >= 0, f"slimming_reg must be >= 0, got {self.slimming_reg}"),
            (0 < self.prune_at <= 1, f"prune_at must be a fraction of training in (0, 1], got {self.prune_at}")]


@dataclass
class ScheduleConfig(PruningConfig):
    """Gradual magnitude and random pruning on a cubic schedule."""
    prune_start: float = 0.1        # fraction of training of the schedule's start
    prune_end: float = 0.6          # fraction of training of its end (the last event)
    prune_steps: int = 5            # number of pruning events

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (0 <= self.prune_start < self.prune_end <= 1,
             f"need 0 <= prune_start < prune_end <= 1, got {self.prune_start} and {self.prune_end}"),
            (self.prune_steps >= 1, f"prune_steps must be >= 1, got {self.prune_steps}")]


# ----------------------------------------------------------------------------- methods

class _PruningMethod(Method):
    """Removes the lowest-scored units globally; subclasses say how to score and when."""

    MAX_PASSES = 4

    knob = "target"
    config_class = PruningConfig

    def __init__(self, config: Optional[PruningConfig] = None):
        super().__init__(config)
        self.units0: Optional[int] = None   # units before any removal (restored on resume)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.units0 = sum(s.width for s in list_sites(ctx.model, ctx.example_inputs))

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
                                  min_units=self.config.min_units, exact=False, follow=ctx.follow)
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

    config_class = GateConfig
    score_fn: Callable[[nn.Module, Iterable[Batch], LossFn], Scores]
    early = False

    def __init__(self, config: Optional[GateConfig] = None):
        super().__init__(config)
        self.done = False
        self.history: list[float] = []
        self.theta0: Optional[list[torch.Tensor]] = None
        self.norm0 = 0.0

    def on_train_start(self) -> Optional[RemovalReport]:
        """Prune now (SNAP, CroP-it-S), or take theta_0 for the early trigger; once per run."""
        if self.done:
            return None
        if not self.early:
            return self._prune()
        if self.theta0 is None:
            self.theta0 = [p.detach().clone() for p in self.ctx.model.parameters()]
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

    def __init__(self, config: Optional[PruningConfig] = None):
        super().__init__(config)
        self.steps_done = 0
        self.events_done = 0
        self.plan: list[tuple[int, float]] = []

    def events(self) -> list[tuple[float, float]]:
        """(fraction of training, cumulative fraction of units removed) of every event."""
        raise NotImplementedError

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.plan = [(max(1, round(at * ctx.total_steps)), frac) for at, frac in self.events()]

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
    config_class = SlimmingConfig

    def setup(self, ctx: MethodContext) -> None:
        if not regulariser.norm_scale_params(ctx.model):
            raise DempError(f"slimming prunes by normalisation scales, but {type(ctx.model).__name__} "
                            "has no BatchNorm/GroupNorm/LayerNorm with a weight; use 'magnitude'")
        super().setup(ctx)

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
    config_class = ScheduleConfig

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

    def __init__(self, config: Optional[ScheduleConfig] = None):
        super().__init__(config)
        self.generator = torch.Generator()

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.generator.manual_seed(ctx.seed)   # a resume then restores the generator's state

    def score(self) -> Scores:
        return random_scores(self.ctx.model, self.ctx.example_inputs, self.generator)

    def state_dict(self) -> dict:
        return super().state_dict() | {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["rng"])
