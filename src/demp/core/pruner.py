"""DemonPruner: the few calls a training loop adds to train with Demon Pruning.

    loss = task_loss + pruner.penalty()
    loss.backward(); optimizer.step()
    pruner.step()      # live-only noise, schedule advance, periodic dead check + removal
    ...
    pruner.finish()    # final dead check + removal

Lambda follows a schedule with a fixed peak (the paper's form).  Given a budget
(``target_units`` or ``target_flops``) the schedule spans twice ``target_by``, rises to its peak
and holds it there, and the controller
in ``demp.core.budget`` scales it (a factor starting at 1, between 0.1 and 4) from the gap
between the dead fraction (removed, or dead and kept) and a plan that runs from 0 to the
target at ``target_by``; once the budget is met lambda and noise are zero.  A budget is spent
in whole dependency groups (a channel tied to others goes at every site or not at all), so
every request is one surgery accepts.  Each dead check also watches the probe outputs for a
collapse (``demp.core.health``): one is warned about, recorded in ``collapsed``, and with a
budget ends the push.  Before each dead check the BatchNorm statistics are re-estimated
(``demp.core.batchnorm``) and restored after it.  The method is described in docs/method.md.

Under ``torch.distributed`` (DDP) the dead masks are AND-reduced over the ranks, so every
rank removes the same units (``demp.core.distributed``); give every rank the same seed, so
the noise keeps the replicas identical too.  Whatever holds parameter references (a DDP
wrapper, an EMA copy) is rebuilt in a callback registered with ``on_removal``
(``demp.integrations.ddp.PrunableDDP`` does it for DDP).  A ``torch.compile``d model is
accepted: the pruner works on its ``_orig_mod`` and resets Dynamo after each removal, so
the next call compiles the new shapes from scratch instead of piling up recompilations.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn

from demp.core import regulariser
from demp.core.batchnorm import StatisticsChoice, choose_statistics, recalibrated
from demp.core.budget import BudgetController, removable_counts, spend
from demp.core.costs import COST_MEASURES, SiteCost, site_costs
from demp.core.health import Collapse, CollapseWatch, ProbeOutputs
from demp.core.shortfall import Observed, causes
from demp.core.penalty import Penalty, PenaltySettings
from demp.core.detection import UnitScan, check_inputs, list_sites, scan_units
from demp.core.distributed import agree_any, agree_dead, check_same_widths
from demp.core.flops import forward_flops
from demp.core.noise import NOISE_MODES, NoiseInjector
from demp.core.schedules import SCHEDULES, Schedule, make_schedule
from demp.core.surgery import RemovalReport, removal_groups, remove_units
from demp.core.utils import count_params, model_device
from demp.errors import DempError


clock = time.perf_counter
"""The pruner's time source (check spacing and the times in the history); tests replace it."""

BUDGET_SPAN = 2
"""With a budget the lambda schedule spans this many times ``target_by`` (its one-cycle peak comes
at 0.6 of target_by); the controller gives up at its end."""


@dataclass
class DemPConfig:
    """Every DemP setting, with its default (the paper's where it has one)."""
    reg_peak: float = 1e-3                # lambda peak (with a budget: before the controller's factor)
    noise_peak: float = 5e-5
    prune_every: int = 1000               # steps between dead checks
    schedule: str = "one_cycle"
    reg_span: float = 1.0                 # fraction of training the schedules cover
    reg_form: str = "l1"
    reg_target: str = "gates"             # gating norm scales (rows where no norm gates) | norm_scales
                                          # (every scale: the paper) | all_weights
    noise_mode: str = "live"
    noise_every: int = 4                  # noise every k steps with sigma*sqrt(k) (1: the paper; 4 keeps
                                          # the random-walk variance at a quarter of the cost)
    probe_batches: Optional[int] = None   # use at most this many probe batches per check
    quasi_eps: tuple[float, ...] = ()
    min_units: int = 1
    recalibrate: bool = True              # re-estimate BatchNorm statistics before each check
    calib_batches: Optional[int] = None   # at most this many calibration batches (None: all)
    target_units: Optional[float] = None  # budget: fraction of units to remove
    target_flops: Optional[float] = None  # budget: fraction of forward FLOPs to remove
    target_by: float = 0.3                # fraction of training by which to meet the budget
    budget_tolerance: float = 0.01        # a budget this close (fraction of its measure) counts as met
    penalty_weights: str = "uniform"      # each unit's L1 term x its cost: uniform | flops | params
    cost_power: float = 1.0               # weight = cost ** cost_power (0: uniform, 1: full cost)
    check_share: Optional[float] = None   # dead checks may take at most this share of the elapsed
                                          # time (later ones wait); None: every prune_every steps
    shift_push: float = 1.0               # lambda x this on the shifts of silenced BatchNorm units
                                          # (0: the paper's form; core/regulariser.py)
    silenced_below: float = 0.05          # a unit is silenced below this x its layer's largest scale
    round_to: int = 1                     # keep each site's width a multiple of this (dead units
                                          # beyond it stay, inert): CPU kernels prefer multiples of 8/16
    seed: int = 0
    final_prune: bool = True

    def validate(self) -> "DemPConfig":
        """Raise DempError naming the first bad setting; return self."""
        def fraction(v: Optional[float]) -> bool:
            return v is None or 0 < v < 1
        checks = [
            (self.reg_peak >= 0, f"reg_peak must be >= 0, got {self.reg_peak}"),
            (self.noise_peak >= 0, f"noise_peak must be >= 0, got {self.noise_peak}"),
            (self.prune_every >= 1, f"prune_every must be >= 1, got {self.prune_every}"),
            (self.noise_every >= 1, f"noise_every must be >= 1, got {self.noise_every}"),
            (self.min_units >= 1, f"min_units must be >= 1, got {self.min_units}"),
            (0 < self.reg_span <= 1, f"reg_span must be a fraction of training in (0, 1], got {self.reg_span}"),
            (self.probe_batches is None or self.probe_batches >= 1,
             f"probe_batches must be >= 1, got {self.probe_batches}"),
            (self.calib_batches is None or self.calib_batches >= 1,
             f"calib_batches must be >= 1, got {self.calib_batches}"),
            (self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}'; choose one of {', '.join(SCHEDULES)}"),
            (self.reg_form in regulariser.REG_FORMS,
             f"unknown reg_form '{self.reg_form}'; choose one of {', '.join(regulariser.REG_FORMS)}"),
            (self.reg_target in regulariser.REG_TARGETS,
             f"unknown reg_target '{self.reg_target}'; choose one of {', '.join(regulariser.REG_TARGETS)}"),
            (self.noise_mode in NOISE_MODES,
             f"unknown noise_mode '{self.noise_mode}'; choose one of {', '.join(NOISE_MODES)}"),
            (fraction(self.target_units), f"target_units must be a fraction of units in (0, 1), got {self.target_units}"),
            (fraction(self.target_flops),
             f"target_flops must be the fraction of forward FLOPs to remove, in (0, 1), got {self.target_flops}"),
            (0 <= self.budget_tolerance < 0.5,
             f"budget_tolerance must be a fraction in [0, 0.5), got {self.budget_tolerance}"),
            (self.penalty_weights in COST_MEASURES,
             f"unknown penalty_weights '{self.penalty_weights}'; choose one of {', '.join(COST_MEASURES)}"),
            (self.penalty_weights == "uniform" or self.reg_target == "gates",
             "penalty_weights other than 'uniform' weight what gates each unit: use reg_target 'gates'"),
            (self.cost_power >= 0, f"cost_power must be >= 0 (0: uniform), got {self.cost_power}"),
            (self.check_share is None or 0 < self.check_share < 1,
             f"check_share must be a fraction of the elapsed time in (0, 1), or null, got {self.check_share}"),
            (self.target_units is None or self.target_flops is None,
             "give one budget: target_units or target_flops, not both"),
            (0 < self.target_by <= 1, f"target_by must be a fraction of training in (0, 1], got {self.target_by}"),
            (self.shift_push >= 0, f"shift_push must be >= 0 (0 turns it off), got {self.shift_push}"),
            (self.round_to >= 1, f"round_to must be >= 1 (1: no rounding), got {self.round_to}"),
            (0 < self.silenced_below < 1,
             f"silenced_below must be a fraction of the layer's largest scale in (0, 1), got {self.silenced_below}"),
            (not self.budgeted or self.reg_peak > 0,
             "a budget needs reg_peak > 0 as lambda's starting value"),
        ]
        for ok, message in checks:
            if not ok:
                raise DempError(message)
        return self

    @property
    def budgeted(self) -> bool:
        return self.target_units is not None or self.target_flops is not None


@dataclass
class RemovalEvent:
    """One dead check (and removal, if anything was dead), as kept in the history."""
    step: int
    dead_found: int
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    check_s: float
    removal_s: float
    widths: dict[str, int] = field(default_factory=dict)
    quasi_dead: dict[str, int] = field(default_factory=dict)   # eps (as str) -> count
    lam: float = 0.0                                           # lambda after the check
    dead_kept: int = 0                                         # dead units left in the network


class DemonPruner:
    """Regulariser, noise and periodic removal of dead units for one model and optimizer.

    ``probe``: re-iterable batches of un-augmented training inputs for the dead checks: input
    tensors, or ``(input, target)`` pairs whose first item is the input.  ``calibration``:
    re-iterable batches of training-like (augmented) inputs for the BatchNorm re-estimation;
    default: the probe.  ``example_inputs``: what ``model`` is called with (a tensor, a tuple
    of positional inputs or a dict of keyword inputs).  ``pruners``: extra torch-pruning pruners
    for layer types the dependency graph cannot see into (passed to ``remove_units``).
    Settings are ``DemPConfig``'s fields, given as keywords or as ``config``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, example_inputs: Any,
                 total_steps: int, probe: Iterable[Any], *, calibration: Optional[Iterable[Any]] = None,
                 config: Optional[DemPConfig] = None, pruners: Optional[dict] = None, **options: Any):
        names = {f.name for f in fields(DemPConfig)}
        unknown = set(options) - names
        if unknown:
            raise DempError(f"unknown DemonPruner option(s) {sorted(unknown)}; valid options: "
                            f"{', '.join(sorted(names))}")
        self.config = DemPConfig(**{**(asdict(config) if config else {}), **options}).validate()
        if total_steps < 1:
            raise DempError(f"total_steps must be >= 1, got {total_steps}")
        for what, data in (("probe", probe), ("calibration", calibration)):
            if data is not None and iter(data) is data:
                raise DempError(f"{what} must be re-iterable (a list of batches or a DataLoader), "
                                "not a one-shot iterator: it is read at every dead check")
        check_inputs(example_inputs, "example_inputs")
        c = self.config
        self._callbacks: list[Callable[[RemovalReport], None]] = []
        self._follow: list[dict] = []
        model = self._unwrap(model)
        _check_optimizer_owns(optimizer, model)
        self.model, self.optimizer = model, optimizer
        self.example_inputs, self.probe, self.total_steps = example_inputs, probe, total_steps
        self.calibration = calibration if calibration is not None else probe
        self.pruners = pruners
        by = max(1, round(c.target_by * total_steps))
        span = max(1, round(c.reg_span * total_steps)) if not c.budgeted else by * BUDGET_SPAN
        self.reg_schedule: Schedule = make_schedule(c.schedule, c.reg_peak, span)
        self.noise_schedule: Schedule = make_schedule(c.schedule, c.noise_peak, span)
        # with a budget lambda rises as the schedule does and then holds its peak, so that the
        # controller's factor alone decides how hard it pushes until the budget is met
        self._peak_step = max(range(0, span + 1, max(1, span // 1000)), key=self.reg_schedule)
        self.budget = (BudgetController(c.target_units or c.target_flops, by, 1.0,
                                        hold_until=min(self._peak_step, by - 1), deadline=BUDGET_SPAN,
                                        tolerance=c.budget_tolerance) if c.budgeted else None)
        self.noise = NoiseInjector(c.noise_mode, c.seed, model_device(model))
        self.step_count = 0
        self.history: list[RemovalEvent] = []
        self._penalty_scale = 0.0          # lambda used by penalty() since the last step()
        self._warned: set[str] = set()
        self._clock: Optional[float] = None   # time of the first step() (check spacing)
        self._check_spent = 0.0            # seconds spent in dead checks and removals
        self._last_check_s = 0.0
        self.final_statistics: Optional[StatisticsChoice] = None   # set by finish()
        self._group_reference: dict[str, float] = {}   # per ungated site: mean unit norm when first seen
        self._refresh_params()
        self.widths: dict[str, int] = {n: sc.width for n, sc in self.costs.items()}
        self.dead_kept: dict[str, int] = {}
        self.tied_dead = 0                 # dead units kept at the last check because tied to live ones
        self.collapsed: Optional[Collapse] = None
        self.watch = CollapseWatch()
        self._gates: Optional[tuple[int, torch.Tensor]] = None   # step and the penalty's gates at the last check
        self._gate_steps: list[float] = []  # their mean change per step between checks, while lambda was on
        self._budget_checks = 0            # dead checks while the budget was open
        self.initial: dict[str, int] = {"units": sum(self.widths.values()),
                                        "flops": self._flops() if c.target_flops else 0}
        self._warn_few_checks(by)

    def _unwrap(self, model: nn.Module) -> nn.Module:
        """The module to prune: a compiled model's ``_orig_mod`` (Dynamo reset after each removal)."""
        from torch.nn.parallel import DistributedDataParallel
        if isinstance(model, DistributedDataParallel):
            raise DempError("DemonPruner was given a DistributedDataParallel wrapper; pass the module "
                            "inside it (ddp.module) and rebuild the wrapper after each removal, e.g. "
                            "with demp.integrations.ddp.PrunableDDP(module, pruner)")
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            self.on_removal(_reset_dynamo)
            return self._unwrap(inner)
        return model

    def follow(self, mapping: dict) -> None:
        """Slice ``mapping`` (parameter -> tensor shaped like it, e.g. sparsity masks) with its
        parameters in every removal, all-or-nothing like the model and optimizer."""
        self._follow.append(mapping)

    def on_removal(self, callback: Callable[[RemovalReport], None]) -> None:
        """Call ``callback(report)`` after every removal event (at once, on every rank alike).

        For what holds references to the old parameters: a DDP wrapper, an EMA copy, a
        compiled model, a second optimizer.
        """
        self._callbacks.append(callback)

    def _warn(self, key: str, message: str) -> None:
        """Warn once per key."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _warn_few_checks(self, by: int) -> None:
        c = self.config
        checks = (by if c.budgeted else self.total_steps) // c.prune_every + 1
        if checks < 3:
            where = "before target_by" if c.budgeted else "in the run"
            self._warn("few_checks", f"only {checks} dead check(s) fit {where} ({self.total_steps} steps, "
                       f"prune_every={c.prune_every}): units that die later are never removed; lower "
                       "prune_every")

    # ------------------------------------------------------------------ per step
    @property
    def lam(self) -> float:
        """Regulariser strength lambda_t at the current step."""
        if not self.budget:
            return self.reg_schedule(self.step_count)
        return self.budget.lam * self.reg_schedule(min(self.step_count, self._peak_step))

    @property
    def sigma(self) -> float:
        """Noise standard deviation sigma_t at the current step (zero once a budget is settled)."""
        return 0.0 if self.budget_done else self.noise_schedule(self.step_count)

    def penalty(self) -> torch.Tensor:
        """lambda_t * sum(w * form(p)) over the penalised parameters; add it to the task loss."""
        lam = self.lam
        self._penalty_scale = lam
        if lam == 0 or self._penalty.empty:
            return torch.zeros((), device=model_device(self.model))
        return self._penalty.value(lam)

    @property
    def penalised(self) -> Penalty:
        """What the penalty reaches now (parameters, weights, gradient); rebuilt after each removal."""
        return self._penalty

    @torch.no_grad()
    def add_penalty_grad(self, grad_scale: float = 1.0) -> None:
        """Add the penalty's exact gradient to ``.grad`` (after backward), instead of ``penalty()``
        in the loss: for loops whose loss cannot change.  ``grad_scale`` is the factor the task
        gradients carry at this point (an AMP loss scale, 1/k with k accumulated batches)."""
        lam = self.lam
        self._penalty_scale = lam
        if lam == 0 or self._penalty.empty:
            return
        params, grads = self._penalty.grads(lam * grad_scale)
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def step(self, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        """Call after optimizer.step(): noise, then (every prune_every steps) check and remove.

        Pass ``loss`` to have a non-finite loss reported before the model is touched.
        Returns the removal report when this step ran a dead check.
        """
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise DempError(f"loss is {loss.item()} at step {self.step_count}: training diverged; "
                            "lower the learning rate or reg_peak (nothing was changed)")
        if self._clock is None:
            self._clock = clock()
        k = self.config.noise_every
        sigma = self.sigma
        if sigma > 0 and self.step_count % k == 0:
            pen = None
            if self.config.noise_mode != "all" and self._penalty_scale > 0:
                pen = dict(zip(*self._penalty.grads(self._penalty_scale)))
            self.noise.apply(self._noise_params, sigma * math.sqrt(k), pen)
        self._penalty_scale = 0.0
        report = None
        if self.step_count % self.config.prune_every == 0 and self._checking and self._check_affordable():
            report = self.prune()
        self.step_count += 1
        return report

    def _check_affordable(self) -> bool:
        """Whether a check now keeps checks within ``check_share`` of the elapsed time (the same
        answer on every rank: any rank's yes)."""
        share = self.config.check_share
        if share is None:
            return True
        elapsed = clock() - (self._clock if self._clock is not None else clock())
        return agree_any(self._check_spent + self._last_check_s <= share * elapsed)

    def finish(self, statistics: bool = True) -> Optional[RemovalReport]:
        """Final dead check and removal, so the reported accuracy is the pruned network's.

        With ``statistics`` (and ``recalibrate``), the BatchNorm statistics the pruned network
        keeps are the better of the trained ones and ones re-estimated on the calibration
        batches, judged on the probe (``demp.core.batchnorm.choose_statistics``; the choice is
        in ``final_statistics``).  A budget that is not met by now is reported with a warning.
        """
        report = self.prune() if self.config.final_prune and self._checking else None
        if report is None:
            self._count_dead()
        if self.budget:
            self._warn_budget()
        if statistics and self.config.recalibrate:
            self.final_statistics = choose_statistics(
                self.model, self._take(self.probe, self.config.probe_batches),
                self._take(self.calibration, self.config.calib_batches))
        return report

    @property
    def budget_met(self) -> bool:
        """True once the budget is met (within ``budget_tolerance``)."""
        return bool(self.budget and self.budget.met)

    @property
    def budget_gave_up(self) -> bool:
        """True when the controller gave up at its deadline, short of the budget."""
        return bool(self.budget and self.budget.short)

    @property
    def budget_done(self) -> bool:
        """Met, given up or stopped by a collapse: no more removal, checks, penalty or noise."""
        return bool(self.budget and self.budget.done)

    @property
    def _checking(self) -> bool:
        """Whether dead checks still run: no budget, one still open, or one met in deaths whose
        removal has not landed yet (dead units that can go are left; lambda stays at zero)."""
        b = self.budget
        if not b or not b.done:
            return True
        return (b.met and self.budget_reached < b.target - b.tolerance - 1e-9
                and sum(self.dead_kept.values()) > self.tied_dead)

    @property
    def budget_reached(self) -> Optional[float]:
        """Fraction of the budget's measure (units or forward FLOPs) removed so far (None: no budget)."""
        if not self.budget:
            return None
        return self._achieved(sum(self.widths.values()))

    @property
    def dead_fraction(self) -> float:
        """Fraction of the budget's measure (units without a budget) that died: removed, or dead
        and kept (as of the last check).  A FLOPs budget counts a kept unit at its cost, shared
        among the sites it is tied to."""
        if self.config.target_flops is None:
            return 1 - (sum(self.widths.values()) - sum(self.dead_kept.values())) / self.initial["units"]
        kept = sum(k * self.costs[n].flops / self.costs[n].tied for n, k in self.dead_kept.items() if n in self.costs)
        return 1 - (self._flops() - kept) / max(1, self.initial["flops"])

    @property
    def overshoot(self) -> float:
        """How far deaths went past the budget, beyond its tolerance (0: within it, or no budget)."""
        if not self.budget:
            return 0.0
        return max(0.0, self.dead_fraction - self.budget.target - self.budget.tolerance)

    def shortfall_causes(self) -> list[str]:
        """What the run showed about a budget not reached (``demp.core.shortfall``)."""
        b, c = self.budget, self.config
        group = self.optimizer.param_groups[0] if self.optimizer.param_groups else {}
        lr = float(group.get("lr", 0.0))
        adaptive = any("exp_avg_sq" in st or "square_avg" in st for st in self.optimizer.state.values())
        return causes(Observed(
            measure=self._measure, removed=self.budget_reached, dead=self.dead_fraction, target=b.target,
            tied_dead=self.tied_dead, gate_step=max(self._gate_steps[-2:]) if self._gate_steps else None,
            at_ceiling=b.at_ceiling, ceiling=b.ceiling, checks=self._budget_checks,
            optimizer=type(self.optimizer).__name__, adaptive=adaptive, lr=lr,
            start_lr=float(group.get("initial_lr", lr)), prune_every=c.prune_every, target_by=c.target_by))

    @property
    def _measure(self) -> str:
        return "units" if self.config.target_units is not None else "forward FLOPs"

    def _warn_short(self, when: str) -> None:
        b = self.budget
        self._warn("short", f"DemP budget not met ({when}): {100 * self.budget_reached:.1f}% of {self._measure} "
                   f"removed ({100 * self.dead_fraction:.1f}% dead) against a target of {100 * b.target:.1f}%; "
                   f"observed: {'; '.join(self.shortfall_causes())}")

    def _warn_budget(self) -> None:
        """At the end: a budget not met, a removal short of a met budget, deaths past it."""
        b = self.budget
        if b.stopped:
            return   # the collapse was warned about
        if not b.met:
            self._warn_short("the run ended")
        elif self.budget_reached < b.target - b.tolerance - 1e-9:
            self._warn("short_removal", f"DemP budget met in deaths but not in removal: {100 * self.budget_reached:.1f}% "
                       f"of {self._measure} removed, {100 * self.dead_fraction:.1f}% dead, target "
                       f"{100 * b.target:.1f}%; observed: {'; '.join(self.shortfall_causes())}")
        if self.overshoot > 0:
            self._warn("overshoot", f"DemP deaths overshot the budget: {100 * self.dead_fraction:.1f}% of "
                       f"{self._measure} dead against a target of {100 * b.target:.1f}% (tolerance "
                       f"{100 * b.tolerance:.1f}%); the units died faster than the controller could slow "
                       "them: lower reg_peak or prune_every")

    # ------------------------------------------------------------------ removal
    def _take(self, batches: Iterable[Any], limit: Optional[int]) -> Iterable[Any]:
        return batches if limit is None else (b for _, b in zip(range(limit), batches))

    def scan(self, on_output: Optional[Callable[[Any, Any], None]] = None) -> UnitScan:
        """Dead check on the probe (eval mode; statistics re-estimated first when configured);
        ``on_output(batch, output)`` sees the outputs of the same pass."""
        probe = self._take(self.probe, self.config.probe_batches)
        if not self.config.recalibrate:
            return scan_units(self.model, probe, self.config.quasi_eps, on_output)
        with recalibrated(self.model, self._take(self.calibration, self.config.calib_batches)):
            return scan_units(self.model, probe, self.config.quasi_eps, on_output)

    def _flops(self) -> int:
        return forward_flops(self.model, self.example_inputs)

    def _achieved(self, units: int) -> float:
        """Fraction of the budget's measure removed so far."""
        if self.config.target_units is not None:
            return 1 - units / self.initial["units"]
        return 1 - self._flops() / max(1, self.initial["flops"])

    def prune(self) -> RemovalReport:
        """Dead check now, then remove the dead units from the model and the optimizer.

        A collapse seen on the probe (with a budget) stops the push and removes nothing."""
        t0 = clock()
        seen = ProbeOutputs()
        scan = self.scan(seen.add)
        scan.dead = agree_dead(scan.dead)
        t1 = clock()
        units, params = scan.units, count_params(self.model)
        self._track_gates()
        stop = self._watch(seen, units - scan.dead_units)
        dead, kept_reasons = ({}, {}) if stop else (scan.dead, {})
        if not stop and scan.dead_units and (self.budget or self.config.round_to > 1):
            dead, kept_reasons = self._choose(scan.dead, units, {s.name: s.width for s in scan.sites})
        if any(bool(m.any()) for m in dead.values()):
            report = remove_units(self.model, dead, self.example_inputs, self.optimizer,
                                  min_units=self.config.min_units, pruners=self.pruners, follow=self._follow)
            check_same_widths({n: r.width_after for n, r in report.sites.items()}, "after a removal")
            if report.units_removed:
                self._refresh_params()
                self._gates = (self.step_count, self._penalty.gates())
        else:
            report = RemovalReport(units, 0, params, params, {})
        self._record_dead(scan, report, kept_reasons)
        if self.budget and not self.budget.done:
            self._budget_checks += 1
            self.budget.update(self.step_count, self.dead_fraction)
            if self.budget.short:
                self._warn_short(f"the controller gave up at step {self.step_count}")
        t2 = clock()
        self._last_check_s = t2 - t0
        self._check_spent += self._last_check_s
        self.history.append(RemovalEvent(
            step=self.step_count, dead_found=scan.dead_units, units_before=units,
            units_after=units - report.units_removed, params_before=params,
            params_after=count_params(self.model), check_s=t1 - t0,
            removal_s=t2 - t1, widths=dict(self.widths),
            quasi_dead={str(e): sum(c.values()) for e, c in scan.quasi_dead.items()}, lam=self.lam,
            dead_kept=sum(self.dead_kept.values())))
        if report.units_removed:
            for callback in self._callbacks:
                callback(report)
        return report

    def _choose(self, dead: dict[str, torch.Tensor], units: int, widths: dict[str, int]
                ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
        """The dead units to request: those surgery can take (not tied to live ones), in whole
        dependency groups, rounded (``round_to``) and within the budget's room; and why the
        other dead units stay."""
        c = self.config
        groups, kept = removal_groups(self.model, dead, self.example_inputs, min_units=c.min_units,
                                      pruners=self.pruners)
        counts = removable_counts({g.root: torch.arange(g.width) < len(g.channels) for g in groups}, c.round_to)
        if self.budget:
            by_flops = c.target_units is None
            room = self.budget.allowance(self._achieved(units)) * self.initial["flops" if by_flops else "units"]
            cost = {g.root: (self.costs[g.root].flops if by_flops and g.root in self.costs else g.units_per_channel)
                    for g in groups}
            counts = spend(room, counts, cost, {g.root: g.width for g in groups}, c.round_to)
        chosen = {n: torch.zeros(w, dtype=torch.bool) for n, w in widths.items()}
        for g in groups:
            for site, mask in g.masks(counts[g.root], widths).items():
                chosen[site] |= mask
        return chosen, kept

    def _record_dead(self, scan: UnitScan, report: RemovalReport, kept_reasons: dict[str, dict[str, int]]) -> None:
        """Widths after the removal, the dead units kept per site, and how many are tied to live ones."""
        self.widths = {s.name: s.width for s in scan.sites}
        for name, rec in report.sites.items():
            self.widths[name] = rec.width_after
        kept = {n: int(m.sum()) - (report.sites[n].removed if n in report.sites else 0) for n, m in scan.dead.items()}
        self.dead_kept = {n: k for n, k in kept.items() if k}
        reasons = [kept_reasons.get(n, {}) for n in scan.dead] + [r.reasons for r in report.sites.values()]
        self.tied_dead = sum(k for r in reasons for why, k in r.items() if "coupled" in why or "tied" in why)

    def _count_dead(self) -> None:
        """A dead check that removes nothing: the dead units kept now (after a met budget), and
        the collapse watch."""
        seen = ProbeOutputs()
        scan = self.scan(seen.add)
        scan.dead = agree_dead(scan.dead)
        self._watch(seen, scan.units - scan.dead_units)
        kept = (removal_groups(self.model, scan.dead, self.example_inputs, min_units=self.config.min_units,
                               pruners=self.pruners)[1] if scan.dead_units else {})
        self._record_dead(scan, RemovalReport(scan.units, 0, 0, 0, {}), kept)

    def _track_gates(self) -> None:
        """How far the penalised gates moved per step since the last check, while lambda was on."""
        now = self._penalty.gates()
        before, self._gates = self._gates, (self.step_count, now)
        if before is not None and before[1].shape == now.shape and now.numel() and self.lam > 0:
            steps = max(1, self.step_count - before[0])
            self._gate_steps = [*self._gate_steps[-4:], float((now - before[1]).abs().mean()) / steps]

    def _watch(self, seen: ProbeOutputs, live: int) -> bool:
        """Look for a collapse in this check's probe outputs; True when it ends the push (a budget)."""
        last = self.history[-1] if self.history else None
        died = (last.units_after - last.dead_kept - live) if last else 0
        lam = self.lam
        cause = (f"the penalty (lambda {lam:.3g}) killed {died} units since step {last.step}: the push was too "
                 "strong; lower reg_peak or give the budget more time (target_by)" if died > 0 and last else
                 f"the penalty (lambda {lam:.3g}) or the learning rate is too strong for this network: lower "
                 "reg_peak or the learning rate")
        found = self.watch.observe(self.step_count, seen, cause)
        if not agree_any(found is not None):
            return False
        found = found or Collapse(self.step_count, "another rank's probe", 0.0, 0.0, cause)
        if self.collapsed is None:
            self.collapsed = found
            stops = ": the push stops here (lambda and noise zero, no more removal)" if self.budget else ""
            self._warn("collapse", f"DemP: {found.line()}{stops}")
        if self.budget and not self.budget.done:
            self.budget.stop()
        return self.budget is not None

    @property
    def live_units(self) -> dict[str, int]:
        """Units per site after the last check, not counting dead units that had to stay."""
        return {n: w - self.dead_kept.get(n, 0) for n, w in self.widths.items()}

    def log_values(self) -> dict[str, float]:
        """What a training loop logs each step: lambda, sigma, and the seconds spent so far in
        dead checks and removals (with the run's wall time, the share ``check_share`` bounds)."""
        return {"lam": self.lam, "sigma": self.sigma, "check_s": self._check_spent}

    def _refresh_params(self) -> None:
        """Re-read the costs and the penalised parameters with their weights (surgery replaces
        the parameters it shrinks, and the costs change with the widths)."""
        c = self.config
        self.costs: dict[str, SiteCost] = site_costs(self.model, self.example_inputs, self.pruners)
        self._noise_params = [p for p in self.model.parameters() if p.requires_grad]
        self._penalty = Penalty(self.model, self.costs, PenaltySettings(
            c.reg_form, c.reg_target, c.penalty_weights, c.cost_power, c.shift_push, c.silenced_below),
            self._group_reference)
        if self._penalty.idle:
            idle = self._penalty.idle
            self._warn("idle_norms", f"{len(idle)} norm layer(s) gate no ReLU unit ({', '.join(idle[:3])}"
                       f"{' ...' if len(idle) > 3 else ''}): their scales are not penalised")

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything needed to resume: step, noise generator, history, widths, budget."""
        return {"step": self.step_count, "noise": self.noise.state_dict(),
                "history": [asdict(e) for e in self.history], "widths": dict(self.widths),
                "dead_kept": dict(self.dead_kept), "config": asdict(self.config),
                "total_steps": self.total_steps, "initial": dict(self.initial),
                "group_reference": dict(self._group_reference),
                "budget": self.budget.state_dict() if self.budget else None,
                "watch": self.watch.state_dict(), "collapsed": asdict(self.collapsed) if self.collapsed else None,
                "gate_steps": list(self._gate_steps), "budget_checks": self._budget_checks,
                "tied_dead": self.tied_dead}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); the model must already have the pruned widths."""
        saved = state.get("config", {})
        mine = asdict(self.config)
        diff = sorted(k for k, v in saved.items() if k in mine and _norm(mine[k]) != _norm(v))
        if diff:
            raise DempError(f"pruner settings differ from the checkpoint in {diff}; resume with "
                            "the settings the run started with")
        widths = dict(state["widths"])
        if widths:
            now = {s.name: s.width for s in list_sites(self.model, self.example_inputs)}
            if now != widths:
                bad = sorted(n for n in set(now) | set(widths) if now.get(n) != widths.get(n))[:5]
                raise DempError(f"the model's widths differ from the checkpoint at {bad}; rebuild "
                                "it at the pruned widths first (demp.load_pruned or the run's "
                                "checkpoint) before loading the pruner state")
        self.step_count = int(state["step"])
        self.noise.load_state_dict(state["noise"])
        self.history = [RemovalEvent(**e) for e in state["history"]]
        self.widths = widths or self.widths
        self.dead_kept = dict(state.get("dead_kept", {}))
        self.initial = dict(state.get("initial", {})) or self.initial
        if state.get("group_reference"):
            self._group_reference = dict(state["group_reference"])
            self._refresh_params()
        if self.budget and state.get("budget"):
            self.budget.load_state_dict(state["budget"])
        self.watch.load_state_dict(state.get("watch", {}))
        self.collapsed = Collapse(**state["collapsed"]) if state.get("collapsed") else None
        self._gate_steps = list(state.get("gate_steps", []))
        self._budget_checks = int(state.get("budget_checks", 0))
        self.tied_dead = int(state.get("tied_dead", 0))
        self._gates = None


def _check_optimizer_owns(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse an optimizer that holds none of the model's parameters (built for another model)."""
    own = {id(p) for p in model.parameters()}
    if own and not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
        raise DempError("the optimizer holds none of the model's parameters: build it from this "
                        "model's parameters (torch.optim.AdamW(model.parameters(), ...)) before "
                        "the pruner")


def _reset_dynamo(report: RemovalReport) -> None:
    """Forget every compiled graph, so a compiled model compiles its new shapes from scratch."""
    import torch._dynamo
    torch._dynamo.reset()


def _norm(v: Any) -> Any:
    """Compare configs across a save/load round trip (tuples come back as lists)."""
    return list(v) if isinstance(v, (tuple, list)) else v
