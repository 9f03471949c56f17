"""Step schedules shared by the regulariser strength lambda_t and the noise scale sigma_t.

Spec sections 3 and 4: both follow the same shape over a span of optimizer steps.  The
default is the one-cycle shape (``torch.optim.lr_scheduler.OneCycleLR`` with cosine
annealing, re-parametrised so the peak sits at ``warmup_frac * span`` and the floor is
reached at ``span``); constant, cosine, linear warm-up and step decay serve the ablations.
A schedule is a frozen value object: calling it with a step gives the value at that step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Callable

SCHEDULES = ("one_cycle", "constant", "cosine", "linear_warmup", "step")


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from start (pct=0) to end (pct=1), as OneCycleLR computes it."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


@dataclass(frozen=True)
class Schedule:
    """A value as a function of the optimizer step; construction validates every field."""

    kind: str
    peak: float
    span: int
    warmup_frac: float = 0.3
    div_start: float = 25.0
    div_final: float = 1e4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        """Normalise milestones to a tuple and reject invalid settings, naming the fix."""
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule kind {self.kind!r}; choose one of {SCHEDULES}")
        if isinstance(self.span, bool) or not isinstance(self.span, Integral) or self.span < 1:
            raise ValueError(f"span must be an integer >= 1 (a number of steps), got {self.span!r}")
        _check("peak", self.peak, ">= 0", lambda v: v >= 0)
        _check("warmup_frac", self.warmup_frac, "in (0, 1]", lambda v: 0 < v <= 1)
        if self.kind == "one_cycle" and self.warmup_frac == 1:
            raise ValueError("one_cycle needs warmup_frac < 1 so the fall has length; got 1")
        _check("div_start", self.div_start, "> 0", lambda v: v > 0)
        _check("div_final", self.div_final, "> 0", lambda v: v > 0)
        _check("gamma", self.gamma, ">= 0", lambda v: v >= 0)
        for m in self.milestones:
            _check("each milestone", m, "in (0, 1] (a fraction of the span)", lambda v: 0 < v <= 1)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(
                f"milestones must be increasing fractions of the span, got {self.milestones}"
            )

    def __call__(self, step: int) -> float:
        """Value at optimizer step ``step`` (>= 0); steps past the span keep the final value."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        t = float(step)
        if self.kind == "constant":
            return self.peak
        if self.kind == "cosine":
            if t > self.span:
                return 0.0
            return self.peak * 0.5 * (1 + math.cos(math.pi * t / self.span))
        if self.kind == "linear_warmup":
            return self.peak * min(1.0, t / (self.warmup_frac * self.span))
        if self.kind == "step":
            passed = sum(t >= m * self.span for m in self.milestones)
            return self.peak * self.gamma**passed
        return self._one_cycle(t)

    def _one_cycle(self, t: float) -> float:
        """OneCycleLR's two cosine phases: peak at warmup_frac*span, floor from span on."""
        start = self.peak / self.div_start
        floor = start / self.div_final
        top = self.warmup_frac * self.span
        if t <= top:
            return _anneal_cos(start, self.peak, t / top)
        return _anneal_cos(self.peak, floor, (min(t, float(self.span)) - top) / (self.span - top))


def _check(name: str, value: object, rule: str, ok: Callable[[float], bool]) -> None:
    """Raise ValueError unless ``value`` is a finite real number satisfying ``ok``."""
    real = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (real and ok(value)):
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def make_schedule(kind: str, peak: float, span: int, **kw: float | tuple[float, ...]) -> Schedule:
    """Build a validated Schedule; unknown keyword names raise ValueError listing the valid ones."""
    valid = tuple(f.name for f in fields(Schedule) if f.name not in ("kind", "peak", "span"))
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown schedule option(s) {unknown}; valid options are {valid}")
    return Schedule(kind, peak, span, **kw)
