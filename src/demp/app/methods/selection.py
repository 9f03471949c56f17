"""Which units the baselines remove and when: global lowest-score selection, round and
cubic schedules, the early-pruning trigger, and merging the reports of several events."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from demp.core.surgery import RemovalReport, SiteRemoval
from demp.errors import DempError


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


