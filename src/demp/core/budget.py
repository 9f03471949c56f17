"""The budget controller: chooses lambda at each dead check so that deaths follow a plan.

Death is a cliff, not a slope: with a fixed lambda peak most units die within a few hundred
steps, and nobody knows in advance which peak removes half of the units.  Instead of a
guessed peak, DemP can be given a budget (a fraction of units, or of forward FLOPs, to remove)
and a time ``by_step`` to reach it.  The controller counts what has *died*: units removed plus
units dead but kept (tied to live ones, or beyond the budget), since a unit that died is lost
to the network whether or not it could be removed.  The rule, applied at every check:

- the plan is linear from nothing at step 0 to the target at ``by_step``;
- ``gap = planned(t) - dead`` (fractions of the budget measure);
- ahead of the plan (gap < 0), at any time: lambda comes down at once to ``exp(gain * gap /
  target)`` times the strength that got it ahead (at most /``max_down``), never below
  ``floor`` times its start, and comes back up as the plan catches up.  Deaths that run
  ahead are the first sign of the cliff, so the controller does not wait for the schedule's
  peak to react;
- behind it (gap > 0), only from ``hold_until`` (the peak of the lambda schedule it scales)
  on: lambda grows by ``exp(gain * gap / target)``, at most x``max_up`` per check and never
  above ``ceiling`` times its start.  Nothing dying while lambda still rises is no reason to
  push harder (pushing during the rise made the network collapse at the peak);
- at ``deadline`` times ``by_step`` without meeting the budget, the controller gives up
  (``short`` is set, ``met`` is not): lambda and noise go to zero so the survivors recover,
  and the run ends short of its budget rather than collapsed;
- the budget is met once the dead fraction is within ``tolerance`` of the target; lambda (and
  noise) then go to zero for good, the pruner removes no more than the budget allows (dead
  units beyond it stay, inert) and runs no more dead checks;
- ``stop()`` ends the push early (a collapse, ``demp.core.health``): lambda goes to zero and
  nothing more is removed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from demp.errors import DempError


@dataclass
class BudgetController:
    """Lambda from the gap between the planned and the achieved fraction removed."""
    target: float            # fraction of the measure to remove (units, or forward FLOPs)
    by_step: int             # step at which the plan reaches the target
    lam: float               # current strength (lambda itself, or a factor on a lambda schedule)
    gain: float = 4.0
    max_up: float = 1.25
    max_down: float = 4.0
    floor: float = 0.1
    ceiling: float = 4.0
    deadline: float = 2.0
    start_lam: float = 0.0
    met: bool = False
    short: bool = False      # gave up at the deadline, below the budget (met stays False)
    hold_until: int = 0      # lambda is left alone before this step (the schedule's peak)
    tolerance: float = 0.0   # met within this much of the target (a fraction of the measure)
    highest: float = 0.0     # the largest lambda reached
    stopped: bool = False    # the push was stopped (a collapse): lambda stays at zero
    ahead_from: float = 0.0  # lambda when deaths got ahead of the plan (0: not ahead)

    @property
    def done(self) -> bool:
        """Met, given up or stopped: lambda stays at zero."""
        return self.met or self.short or self.stopped

    @property
    def at_ceiling(self) -> bool:
        """Whether lambda reached its ceiling at some point (more strength was not allowed)."""
        return self.highest >= self.start_lam * self.ceiling * (1 - 1e-9)

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise DempError(f"the budget must be a fraction in (0, 1), got {self.target}")
        if self.by_step < 1:
            raise DempError(f"the budget's by_step must be >= 1, got {self.by_step}")
        if self.lam <= 0:
            raise DempError(f"a budget needs a starting lambda > 0 (reg_peak), got {self.lam}")
        if not 0 <= self.tolerance < self.target:
            raise DempError(f"the budget's tolerance must be in [0, target), got {self.tolerance}")
        self.start_lam = self.start_lam or self.lam
        self.highest = max(self.highest, self.lam)

    def planned(self, step: int) -> float:
        """Fraction the plan wants removed by ``step``."""
        return self.target * min(1.0, max(0.0, step / self.by_step))

    def update(self, step: int, dead: float) -> float:
        """New lambda after a check at ``step`` that found ``dead`` of the measure dead
        (removed, or dead and kept)."""
        if self.done:
            return self.lam
        if dead >= self.target - self.tolerance - 1e-9:
            self.met, self.lam = True, 0.0
            return self.lam
        if step >= self.deadline * self.by_step:
            self.short, self.lam = True, 0.0
            return self.lam
        gap = self.planned(step) - dead
        if gap < 0:   # ahead: a strength for the gap, from the one that got it ahead (no wind-down)
            self.ahead_from = self.ahead_from or self.lam
            factor = max(1 / self.max_down, math.exp(self.gain * gap / self.target))
            self.lam = max(self.start_lam * self.floor, self.ahead_from * factor)
            return self.lam
        self.ahead_from = 0.0
        if step < self.hold_until:
            return self.lam
        factor = min(self.max_up, math.exp(self.gain * gap / self.target))
        self.lam = min(self.start_lam * self.ceiling, max(self.start_lam * self.floor, self.lam * factor))
        self.highest = max(self.highest, self.lam)
        return self.lam

    def allowance(self, removed: float) -> float:
        """Fraction of the measure that may still be removed without passing the budget."""
        return max(0.0, self.target - removed)

    def stop(self) -> None:
        """End the push for good (lambda zero, no more removal)."""
        self.stopped, self.lam = True, 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ----------------------------------------------------------------------------- what a check may remove

def removable_counts(candidates: dict[str, torch.Tensor], round_to: int = 1) -> dict[str, int]:
    """How many of each site's candidate units may go: all, or with ``round_to`` r as many as
    keep the width a multiple of r (and at least r; candidates beyond that stay, inert)."""
    out = {}
    for name, mask in candidates.items():
        width, dead = mask.numel(), int(mask.sum())
        keep = width - dead if round_to <= 1 else min(width, max(round_to, -(-(width - dead) // round_to) * round_to))
        out[name] = width - keep
    return out


def _step_sizes(width: int, round_to: int) -> tuple[int, int]:
    """The first and the following amounts a site's removal grows by (1 and 1 without rounding;
    with round_to r: what brings the width to a multiple of r, then r)."""
    return (1, 1) if round_to <= 1 else (width % round_to or round_to, round_to)


def spend(room: float, removable: dict[str, int], cost: dict[str, float], widths: dict[str, int],
          round_to: int = 1) -> dict[str, int]:
    """How many units each site gives up so that their cost stays within ``room``.

    Each unit costs what removing it saves (one unit, or its forward FLOPs at the current
    widths).  Every site gives up the same share of what it may lose (whole steps of
    ``round_to``), then the room left is filled step by step from the costliest sites down.
    """
    total = sum(removable[n] * cost[n] for n in removable)
    if total <= room + 1e-9:
        return dict(removable)
    share = room / total
    take = {}
    for n, most in removable.items():
        first, step = _step_sizes(widths[n], round_to)
        want = math.floor(most * share)
        take[n] = 0 if want < first else min(most, first + (want - first) // step * step)
    left = room - sum(take[n] * cost[n] for n in take)
    for n in sorted(removable, key=lambda n: -cost[n]):
        first, step = _step_sizes(widths[n], round_to)
        while True:
            more = first if take[n] == 0 else step
            if take[n] + more > removable[n] or more * cost[n] > left + 1e-9:
                break
            take[n] += more
            left -= more * cost[n]
    return take
