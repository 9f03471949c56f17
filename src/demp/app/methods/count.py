"""Counting dead units without removing them: DemP's penalty and noise, dead checks that only count.

``demp study`` trains with this method to see how hyper-parameters make units die.  At every
dead check (every ``prune_every`` steps and once after the last step) it records, per site and
in total, the units dead on the probe (eval mode, BatchNorm statistics re-estimated exactly as
DemP's dead check does, since it is the same ``DemonPruner.scan``), the quasi-dead units, and
how the dead set moved since the previous check: the overlap (fraction of the units dead
before that are still dead), the units revived and the units newly dead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from demp.app.methods.base import register_method
from demp.app.methods.demp import DemPMethod
from demp.core.pruner import DemonPruner, DemPConfig
from demp.core.surgery import RemovalReport
from demp.core.utils import count_params
from demp.errors import DempError

Masks = dict[str, torch.Tensor]


@dataclass
class CountConfig(DemPConfig):
    """DemP's penalty, noise and check settings; checks count and never remove."""
    prune_every: int = 100
    quasi_eps: tuple[float, ...] = (1e-3, 1e-2)

    def validate(self) -> "CountConfig":
        if self.budgeted:
            raise DempError("method count removes nothing, so a budget (target_units, target_flops) "
                            "cannot be met; use method demp for budgets")
        super().validate()
        return self


@dataclass
class DeathCount:
    """One dead check: how many units are dead, quasi-dead, and how the dead set changed."""
    step: int                                  # pruner step of the check (the last one: total steps)
    units: int
    dead: int
    sites: dict[str, int]                      # dead units per site
    quasi: dict[str, int]                      # eps (as str) -> quasi-dead units
    overlap: Optional[float]                   # still dead / dead at the previous check (None: none were)
    revived: int                               # dead at the previous check, alive now
    new: int                                   # alive at the previous check, dead now
    ever_dead: int                             # units dead at any check so far
    widths: dict[str, int] = field(default_factory=dict)


def compare_dead(before: Masks, now: Masks) -> tuple[int, int, int]:
    """(still dead, revived, newly dead) between two checks' dead masks of the same sites."""
    stayed = revived = new = 0
    for name, mask in now.items():
        prev = before.get(name, torch.zeros_like(mask))
        stayed += int((prev & mask).sum())
        revived += int((prev & ~mask).sum())
        new += int((~prev & mask).sum())
    return stayed, revived, new


def overlap_fraction(stayed: int, revived: int) -> Optional[float]:
    """Fraction of the previously dead units that are still dead (None when none were dead)."""
    return stayed / (stayed + revived) if stayed + revived else None


class DeathCounter(DemonPruner):
    """A DemonPruner whose dead checks count and compare dead sets instead of removing units."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.counts: list[DeathCount] = []
        self.dead_masks: Masks = {}
        self.ever_masks: Masks = {}

    def prune(self) -> RemovalReport:
        """Dead check (same probe and re-estimated statistics as DemP's); records, removes nothing."""
        scan = self.scan()
        now = {n: m.bool() for n, m in scan.dead.items()}
        stayed, revived, new = compare_dead(self.dead_masks, now)
        self.ever_masks = {n: m | self.ever_masks.get(n, torch.zeros_like(m)) for n, m in now.items()}
        self.dead_masks = now
        self.counts.append(DeathCount(
            step=self.step_count, units=scan.units, dead=scan.dead_units,
            sites={n: int(m.sum()) for n, m in now.items()},
            quasi={str(e): sum(c.values()) for e, c in scan.quasi_dead.items()},
            overlap=overlap_fraction(stayed, revived), revived=revived, new=new,
            ever_dead=int(sum(int(m.sum()) for m in self.ever_masks.values())),
            widths={s.name: s.width for s in scan.sites}))
        params = count_params(self.model)
        return RemovalReport(scan.units, 0, params, params, {})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "counts": [asdict(c) for c in self.counts],
                "dead_masks": dict(self.dead_masks), "ever_masks": dict(self.ever_masks)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.counts = [DeathCount(**c) for c in state["counts"]]
        self.dead_masks, self.ever_masks = dict(state["dead_masks"]), dict(state["ever_masks"])


@register_method
class CountMethod(DemPMethod):
    """DemP without removal: each check's counts go to metrics.jsonl under ``deaths``."""

    name = "count"
    config_class = CountConfig
    knob = "reg_peak"
    aliases: dict[str, str] = {}
    # fixed here: no budget, and the final check always runs (it only counts)
    app_fields = ("seed", "target_units", "target_flops", "target_by", "min_units", "final_prune")
    pruner_class = DeathCounter

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.logged = 0

    def log_values(self) -> dict[str, Any]:
        """lambda, sigma, and the checks made since the last call (each check is logged once)."""
        counts = self.pruner.counts[self.logged:]
        self.logged = len(self.pruner.counts)
        return {**super().log_values(), **({"deaths": [asdict(c) for c in counts]} if counts else {})}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "logged": self.logged}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.logged = int(state["logged"])
