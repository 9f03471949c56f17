"""A DistributedDataParallel wrapper that is rebuilt after every removal event.

DDP binds its gradient buckets to the parameters it was built with, and a removal event
replaces the parameters it shrinks, so the wrapper must be rebuilt (on every rank at once,
which ``DemonPruner``'s identical decisions guarantee)::

    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = demp.DemonPruner(model, optimizer, x[:2], total_steps, probe)
    ddp = PrunableDDP(model, pruner, device_ids=[local_rank])   # call ddp(x) to train
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from demp.core.pruner import DemonPruner
from demp.core.surgery import RemovalReport


class PrunableDDP(nn.Module):
    """Calls go to ``DistributedDataParallel(module, **ddp_options)``, rebuilt after each removal.

    Building DDP broadcasts rank 0's parameters and buffers, so after a removal every rank
    continues from rank 0's replica.  ``module`` is the pruned model itself (save its
    ``state_dict``, not this wrapper's).  The pruner holds this wrapper only weakly, so ``del``
    frees DDP's reducer at once: do it before ``destroy_process_group`` (a reducer freed after
    the group, at interpreter exit, can abort the process).
    """

    def __init__(self, module: nn.Module, pruner: Optional[DemonPruner] = None, **ddp_options: Any):
        super().__init__()
        self.ddp_options = ddp_options
        self.ddp = DistributedDataParallel(module, **ddp_options)
        if pruner is not None:
            pruner.on_removal(_weakly(self.rebuild))

    @property
    def module(self) -> nn.Module:
        return self.ddp.module

    def rebuild(self, report: Optional[RemovalReport] = None) -> None:
        """A fresh DDP wrapper over the module's current parameters (a collective: all ranks call it)."""
        self.ddp = DistributedDataParallel(self.ddp.module, **self.ddp_options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)


def _weakly(method: Callable[[Optional[RemovalReport]], None]) -> Callable[[RemovalReport], None]:
    """A callback that calls a bound ``method`` while its object lives, without keeping it alive."""
    ref = weakref.WeakMethod(method)

    def call(report: RemovalReport) -> None:
        bound = ref()
        if bound is not None:
            bound(report)
    return call
