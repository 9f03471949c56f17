"""Demon Pruning as a training method: a DemonPruner driven by the loop's hooks."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, ClassVar, Optional

import torch

from demp.app.methods.base import Method, MethodContext, register_method
from demp.core.pruner import DemonPruner, DemPConfig
from demp.core.surgery import RemovalReport


@register_method
class DemPMethod(Method):
    """Demon Pruning through DemonPruner; ``method.target`` is ``target_units``."""

    name = "demp"
    config_class = DemPConfig
    knob = "reg_peak"
    aliases = {"target": "target_units"}
    app_fields = ("seed",)
    pruner_class: ClassVar[type[DemonPruner]] = DemonPruner

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        calibration = (ctx.train_batches(self.config.calib_batches or ctx.calib_batches)
                       if self.config.recalibrate else None)
        self.pruner = self.pruner_class(ctx.model, ctx.optimizer, ctx.example_inputs, ctx.total_steps,
                                        ctx.probe, calibration=calibration,
                                        config=replace(self.config, seed=ctx.seed))
        for mapping in ctx.follow:
            self.pruner.follow(mapping)

    def penalty(self) -> torch.Tensor:
        return self.pruner.penalty()

    def after_step(self, step: int, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        return self.pruner.step(loss)

    def finish(self) -> Optional[RemovalReport]:
        return self.pruner.finish(statistics=False)   # the loop settles the statistics for every method

    def log_values(self) -> dict[str, Any]:
        return self.pruner.log_values()

    def budget(self) -> Optional[dict[str, Any]]:
        c, pruner = self.config, self.pruner
        if not c.budgeted:
            return None
        open_ = not pruner.budget_met or pruner.budget_reached < pruner.budget.target - pruner.budget.tolerance - 1e-9
        return {"target": c.target_units or c.target_flops,
                "measure": "units" if c.target_units is not None else "fwd_flops",
                "met": pruner.budget_met, "gave_up": pruner.budget_gave_up, "stopped": pruner.budget.stopped,
                "dead": pruner.dead_fraction, "overshoot": pruner.overshoot,
                "tied_dead": pruner.tied_dead,
                "causes": pruner.shortfall_causes() if open_ and not pruner.budget.stopped else []}

    def collapsed(self) -> Optional[dict[str, Any]]:
        return asdict(self.pruner.collapsed) if self.pruner.collapsed else None

    def knob_value(self) -> Optional[float]:
        c = self.config
        return c.target_units or c.target_flops or c.reg_peak

    def knob_name(self) -> Optional[str]:
        """target_units or target_flops for a budget run, else reg_peak."""
        c = self.config
        return next((n for n in ("target_units", "target_flops") if getattr(c, n) is not None), self.knob)

    def state_dict(self) -> dict:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state)
