"""Why a budget was not reached: the causes the pruner observed, not guessed.

Each cause is read off what happened during the run (``Observed``), in order of how directly
it explains the shortfall:

- units died but are tied to live ones (a residual stream, a concatenation): they count as
  dead, but cannot be removed;
- the penalised gates stopped moving while lambda was on: the penalty is lost in the
  optimizer (under Adam-type optimizers a parameter moves at most about lr per step whatever
  lambda is, and a one-cycle lr near its end moves nothing); naming the optimizer and its lr;
- lambda at its ceiling while the gates still moved: the starting strength was too low;
- too few dead checks before the deadline;
- otherwise: too little time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

STALLED = 1e-3
"""Gates whose mean relative change per check stays below this have stopped moving."""


@dataclass
class Observed:
    """What a run showed about its budget."""
    measure: str                  # "units" | "forward FLOPs"
    removed: float                # fraction of the measure removed
    dead: float                   # fraction dead (removed, or dead and kept)
    target: float
    tied_dead: int                # dead units kept because a unit they are tied to lives
    movement: Optional[float]     # mean relative change of the gates per check, last checks with lambda on
    at_ceiling: bool
    ceiling: float                # lambda's ceiling, times reg_peak
    checks: int                   # dead checks run while the budget was open
    optimizer: str
    lr: float
    prune_every: int
    target_by: float


def causes(o: Observed) -> list[str]:
    """The observed causes of a shortfall, most direct first (at least one)."""
    out = []
    if o.tied_dead and o.dead > o.removed + 1e-9:
        out.append(f"{o.tied_dead} dead units are tied to live ones (coupled channels: a residual stream, "
                   "a concatenation), so they count as dead but cannot be removed")
    if o.movement is not None and o.movement < STALLED:
        out.append(f"the penalised gates stopped moving ({o.movement:.1e} relative change per check while "
                   f"lambda was on): the penalty is lost in the optimizer ({o.optimizer} at lr {o.lr:.3g} "
                   "now); raise the learning rate over the push or meet the budget earlier (target_by)")
    elif o.at_ceiling:
        out.append(f"lambda reached its ceiling ({o.ceiling:g}x reg_peak) while the gates still moved: "
                   "start from a larger reg_peak")
    if o.checks < 3:
        out.append(f"only {o.checks} dead check(s) ran while the budget was open (prune_every={o.prune_every}): "
                   "lower prune_every")
    if not out:
        out.append(f"too little time: units were still dying when the controller stopped; raise target_by "
                   f"(now {o.target_by}) or train longer")
    return out
