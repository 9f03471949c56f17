"""DemonPruner: the few calls a training loop adds to train with Demon Pruning.

    loss = task_loss + pruner.penalty()
    loss.backward(); optimizer.step()
    pruner.step()      # live-only noise, schedule advance, periodic dead check + removal
    ...
    pruner.finish()    # final dead check + removal
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from demp.core import regulariser
from demp.core.detection import UnitScan, list_sites, scan_units
from demp.errors import DempError
from demp.core.noise import NOISE_MODES, NoiseInjector
from demp.core.schedules import Schedule, make_schedule
from demp.core.surgery import RemovalReport, remove_units
from demp.core.utils import count_params, model_device


@dataclass
class DemPConfig:
    """Every DemP setting, with the spec's defaults."""
    reg_peak: float = 1e-3
    noise_peak: float = 5e-5
    prune_every: int = 1000
    schedule: str = "one_cycle"
    reg_span: Optional[int] = None        # steps the schedules cover (default: total_steps)
    reg_form: str = "l1"
    reg_target: str = "norm_scales"
    noise_mode: str = "live"
    noise_every: int = 1                  # noise every k steps with sigma*sqrt(k)
    probe_batches: Optional[int] = None   # use at most this many probe batches per check
    quasi_eps: tuple[float, ...] = ()
    min_units: int = 1
    seed: int = 0
    final_prune: bool = True

    def validate(self, total_steps: int) -> None:
        """Raise DempError naming the first bad setting."""
        if total_steps < 1:
            raise DempError(f"total_steps must be >= 1, got {total_steps}")
        checks = [
            (self.reg_peak >= 0, f"reg_peak must be >= 0, got {self.reg_peak}"),
            (self.noise_peak >= 0, f"noise_peak must be >= 0, got {self.noise_peak}"),
            (self.prune_every >= 1, f"prune_every must be >= 1, got {self.prune_every}"),
            (self.noise_every >= 1, f"noise_every must be >= 1, got {self.noise_every}"),
            (self.min_units >= 1, f"min_units must be >= 1, got {self.min_units}"),
            (self.reg_span is None or self.reg_span >= 1, f"reg_span must be >= 1, got {self.reg_span}"),
            (self.probe_batches is None or self.probe_batches >= 1,
             f"probe_batches must be >= 1, got {self.probe_batches}"),
            (self.reg_form in regulariser.REG_FORMS,
             f"unknown reg_form '{self.reg_form}'; choose one of {', '.join(regulariser.REG_FORMS)}"),
            (self.reg_target in regulariser.REG_TARGETS,
             f"unknown reg_target '{self.reg_target}'; choose one of {', '.join(regulariser.REG_TARGETS)}"),
            (self.noise_mode in NOISE_MODES,
             f"unknown noise_mode '{self.noise_mode}'; choose one of {', '.join(NOISE_MODES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DempError(message)


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


class DemonPruner:
    """Regulariser, noise and periodic removal of dead units for one model and optimizer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, example_inputs: Any,
                 total_steps: int, probe: Iterable[Any], reg_peak: float = 1e-3,
                 noise_peak: float = 5e-5, prune_every: int = 1000, schedule: str = "one_cycle",
                 **options: Any):
        unknown = set(options) - set(DemPConfig.__dataclass_fields__)
        if unknown:
            raise DempError(f"unknown DemonPruner option(s) {sorted(unknown)}; valid options: "
                            f"{', '.join(DemPConfig.__dataclass_fields__)}")
        self.config = DemPConfig(reg_peak=reg_peak, noise_peak=noise_peak, prune_every=prune_every,
                                 schedule=schedule, **options)
        self.config.validate(total_steps)
        if iter(probe) is probe:
            raise DempError("probe must be re-iterable (a list of batches or a DataLoader), "
                            "not a one-shot iterator: it is read at every dead check")
        self.model, self.optimizer = model, optimizer
        self.example_inputs, self.probe, self.total_steps = example_inputs, probe, total_steps
        span = self.config.reg_span or total_steps
        self.reg_schedule: Schedule = make_schedule(schedule, reg_peak, span)
        self.noise_schedule: Schedule = make_schedule(schedule, noise_peak, span)
        self.noise = NoiseInjector(self.config.noise_mode, self.config.seed, model_device(model))
        self.step_count = 0
        self.history: list[RemovalEvent] = []
        self.last_report: Optional[RemovalReport] = None
        self._penalty_scale = 0.0          # lambda used by penalty() since the last step()
        self._refresh_params()
        self.widths: dict[str, int] = {}
        self.dead_kept: dict[str, int] = {}

    # ------------------------------------------------------------------ per step
    @property
    def lam(self) -> float:
        """Regulariser strength lambda_t at the current step."""
        return self.reg_schedule(self.step_count)

    @property
    def sigma(self) -> float:
        """Noise standard deviation sigma_t at the current step."""
        return self.noise_schedule(self.step_count)

    def penalty(self) -> torch.Tensor:
        """lambda_t * sum(form(p)) over the regularised parameters; add it to the task loss."""
        lam = self.lam
        self._penalty_scale = lam
        if lam == 0 or not self._reg_params:
            return torch.zeros((), device=model_device(self.model))
        return lam * regulariser.penalty(self._reg_params, self.config.reg_form)

    def step(self, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        """Call after optimizer.step(): noise, then (every prune_every steps) check and remove.

        Pass ``loss`` to have a non-finite loss reported before the model is touched.
        Returns the removal report when this step ran a dead check.
        """
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise DempError(f"loss is {loss.item()} at step {self.step_count}: training diverged; "
                            "lower the learning rate or reg_peak (nothing was changed)")
        k = self.config.noise_every
        if self.config.noise_peak > 0 and self.step_count % k == 0:
            sigma = self.sigma * math.sqrt(k)
            pen = None
            if self.config.noise_mode != "all" and self._penalty_scale > 0:
                grads = regulariser.penalty_grad(self._reg_params, self.config.reg_form,
                                                 self._penalty_scale)
                pen = dict(zip(self._reg_params, grads))
            self.noise.apply(self._noise_params, sigma, pen)
        self._penalty_scale = 0.0
        report = None
        if self.step_count % self.config.prune_every == 0:
            report = self.prune()
        self.step_count += 1
        return report

    def finish(self) -> Optional[RemovalReport]:
        """Final dead check and removal, so the reported accuracy is the pruned network's."""
        return self.prune() if self.config.final_prune else None

    # ------------------------------------------------------------------ removal
    def _probe(self) -> Iterable[Any]:
        if self.config.probe_batches is None:
            return self.probe
        return (b for _, b in zip(range(self.config.probe_batches), self.probe))

    def scan(self) -> UnitScan:
        """Dead check on the probe data (eval mode, mode restored)."""
        return scan_units(self.model, self._probe(), self.config.quasi_eps)

    def prune(self) -> RemovalReport:
        """Dead check now, then remove the dead units from the model and the optimizer."""
        t0 = time.perf_counter()
        scan = self.scan()
        t1 = time.perf_counter()
        units = scan.units
        params = count_params(self.model)
        if scan.dead_units:
            report = remove_units(self.model, scan.dead, self.example_inputs, self.optimizer,
                                  min_units=self.config.min_units)
            self._refresh_params()
        else:
            report = RemovalReport(units, 0, params, params, {})
        self.widths = {s.name: s.width for s in scan.sites}
        for name, rec in report.sites.items():
            self.widths[name] = rec.width_after
        self.dead_kept = {n: r.kept_dead for n, r in report.sites.items() if r.kept_dead}
        self.history.append(RemovalEvent(
            step=self.step_count, dead_found=scan.dead_units, units_before=units,
            units_after=units - report.units_removed, params_before=params,
            params_after=count_params(self.model), check_s=t1 - t0,
            removal_s=time.perf_counter() - t1, widths=dict(self.widths),
            quasi_dead={str(e): sum(c.values()) for e, c in scan.quasi_dead.items()}))
        self.last_report = report
        return report

    @property
    def live_units(self) -> dict[str, int]:
        """Units per site after the last check, not counting dead units that had to stay."""
        return {n: w - self.dead_kept.get(n, 0) for n, w in self.widths.items()}

    def _refresh_params(self) -> None:
        """Re-read parameter lists (surgery replaces the parameters it shrinks)."""
        self._reg_params = regulariser.regularised_params(self.model, self.config.reg_target)
        self._noise_params = [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything needed to resume: step, noise generator, history, site widths."""
        return {"step": self.step_count, "noise": self.noise.state_dict(),
                "history": [asdict(e) for e in self.history], "widths": dict(self.widths),
                "dead_kept": dict(self.dead_kept), "config": asdict(self.config),
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); the model must already have the pruned widths."""
        saved = state.get("config", {})
        diff = sorted(k for k, v in saved.items()
                      if k in asdict(self.config) and _norm(asdict(self.config)[k]) != _norm(v))
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
        self.widths = dict(state["widths"])
        self.dead_kept = dict(state.get("dead_kept", {}))
        self.last_report = None


def _norm(v: Any) -> Any:
    """Compare configs across a save/load round trip (tuples come back as lists)."""
    return list(v) if isinstance(v, (tuple, list)) else v
