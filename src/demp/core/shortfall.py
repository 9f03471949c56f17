"""Why a budget was not reached: the causes the pruner observed, not guessed.

Each cause is read off what happened during the run (``Observed``), in order of how directly
it explains the shortfall:

- units died but are tied to live ones (a residual stream, a concatenation): they count as
  dead, but cannot be removed;
- the penalty is lost in the optimizer: the learning rate has fallen to (almost) nothing, or an
  Adam-type optimizer already moves the gates by about lr per step, its largest step whatever
  lambda is (so a larger reg_peak changes nothing); naming the optimizer and its lr;
- lambda at its ceiling while the gates still moved: the starting strength was too low;
- too few dead checks before the deadline;
- otherwise: too little time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LR_GONE = 0.01
"""A learning rate below this share of its starting value moves nothing any more."""
AT_STEP_SIZE = 0.5
"""Adam-type steps are about lr: gates moving at least this share of lr per step are at the limit."""


@dataclass
class Observed:
    """What a run showed about its budget."""
    measure: str                  # "units" | "forward FLOPs"
    removed: float                # fraction of the measure removed
    dead: float                   # fraction dead (removed, or dead and kept)
    target: float
    tied_dead: int                # dead units kept because a unit they are tied to lives
    gate_step: Optional[float]    # mean change of a gate per optimizer step, last checks with lambda on
    at_ceiling: bool
    ceiling: float                # lambda's ceiling, times reg_peak
    checks: int                   # dead checks run while the budget was open
    optimizer: str
    adaptive: bool                # Adam-type: a step is about lr whatever the gradient's size
    lr: float                     # now
    start_lr: float               # at the start (the schedule's base)
    prune_every: int
    target_by: float


def causes(o: Observed) -> list[str]:
    """The observed causes of a shortfall, most direct first (at least one)."""
    out = []
    if o.tied_dead and o.dead > o.removed + 1e-9:
        out.append(f"{o.tied_dead} dead units are tied to live ones (coupled channels: a residual stream, "
                   "a concatenation), so they count as dead but cannot be removed")
    if o.lr <= LR_GONE * o.start_lr or o.lr == 0:
        out.append(f"the penalty is lost in the optimizer: {o.optimizer}'s learning rate is {o.lr:.3g} (from "
                   f"{o.start_lr:.3g}), so the gates no longer move whatever lambda is; keep the learning rate up "
                   "over the push (another schedule) or meet the budget earlier (target_by)")
    elif o.adaptive and o.gate_step is not None and o.gate_step >= AT_STEP_SIZE * o.lr:
        out.append(f"the penalty is lost in the optimizer: {o.optimizer} at lr {o.lr:.3g} already moves the gates "
                   f"by {o.gate_step:.3g} per step, about its largest step, so a larger reg_peak cannot push "
                   "faster; raise the learning rate or give the budget more time (target_by)")
    elif o.at_ceiling:
        out.append(f"lambda reached its ceiling ({o.ceiling:g}x reg_peak) while the gates could still move "
                   "faster: start from a larger reg_peak")
    if o.checks < 3:
        out.append(f"only {o.checks} dead check(s) ran while the budget was open (prune_every={o.prune_every}): "
                   "lower prune_every")
    if not out:
        out.append(f"too little time: the deadline (twice target_by) came before enough units died; raise target_by "
                   f"(now {o.target_by}) or train longer")
    return out
