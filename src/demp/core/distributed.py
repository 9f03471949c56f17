"""Identical pruning decisions on every rank of a ``torch.distributed`` job.

Under DDP every rank holds a replica of the model and must remove exactly the same units,
or the next gradient all-reduce fails (or hangs).  A unit counts as dead only if it is dead
on every rank's probe: the dead masks are AND-reduced (all-reduce MIN) before removal, so
the budget and every later decision see the same numbers everywhere.  Before and after a
removal the ranks compare their widths, so a model that differs between ranks is a clear
error on every rank instead of a collective that times out.  Without an initialised
process group (or with one rank) every function here is a no-op.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist

from demp.errors import DempError


def world_size() -> int:
    """Number of ranks in the default process group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return world_size() > 1


def _device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _min_max(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise minimum and maximum of an int64 vector over the ranks, in one all-reduce."""
    both = torch.cat([values, -values]).to(_device(), torch.int64)
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    n = len(values)
    return both[:n].cpu(), -both[n:].cpu()


def check_same_widths(widths: Mapping[str, int], when: str) -> None:
    """Raise DempError on every rank when the ranks' site widths differ (same collectives everywhere)."""
    if not is_distributed():
        return
    mine = torch.tensor([len(widths), *widths.values()], dtype=torch.int64)
    size_low, size_high = _min_max(mine[:1])
    if size_low.item() != size_high.item():
        raise DempError(f"{when}: the ranks' models have different numbers of ReLU sites; every rank "
                        "must build the same model (same seed, same code) and wrap it the same way")
    low, high = _min_max(mine)
    if not torch.equal(low, high):
        names = [n for n, lo, hi in zip(widths, low[1:], high[1:]) if lo != hi][:5]
        raise DempError(f"{when}: the ranks' models differ in width at {names}; every rank must "
                        "start from the same model and give DemonPruner the same settings and seed")


def agree_dead(dead: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks of units dead on every rank (all-reduce MIN), in one collective."""
    if not is_distributed():
        return dict(dead)
    check_same_widths({name: len(mask) for name, mask in dead.items()}, "before a dead check")
    if not dead:
        return {}
    flat = torch.cat([m.flatten().to(torch.uint8) for m in dead.values()]).to(_device())
    dist.all_reduce(flat, op=dist.ReduceOp.MIN)
    agreed = flat.cpu().bool().split([m.numel() for m in dead.values()])
    return {name: a.view_as(m) for (name, m), a in zip(dead.items(), agreed)}


def agree_any(flag: bool) -> bool:
    """True on every rank when it is true on any rank (all-reduce MAX): one decision for all."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
