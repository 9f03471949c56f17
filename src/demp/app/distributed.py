"""How ``demp train`` runs on several processes (torchrun) and with ``torch.compile``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``World.start`` joins the process
group (gloo on CPU, NCCL on GPU).  ``train.batch_size`` is the global batch: every rank reads
its contiguous share of each batch of the same shuffled order, so the ranks together see what
one process would.  Rank 0 alone writes the run folder; the other ranks compute the same
decisions (the pruner agrees on dead units) and write nothing.  The training forward is the
model wrapped in DDP and/or compiled; after a removal it is rebuilt from scratch.
"""
from __future__ import annotations

import gc
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from demp.errors import DempError


@dataclass
class World:
    """This process's rank among ``size`` training processes (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False        # True when ``start`` initialised the process group

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @staticmethod
    def start(device: torch.device) -> "World":
        """Join the process group torchrun describes in the environment (or reuse one already up)."""
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size(), local)
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return World()
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return World(dist.get_rank(), size, local, owns_group=True)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (``LOCAL_RANK``) on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise DempError(f"train.batch_size {batch_size} is the global batch and must divide evenly "
                            f"over the {self.size} processes; use a multiple of {self.size}")

    def same(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. a run folder named after the time)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self, finished: bool = True) -> None:
        """Leave the process group if ``start`` joined it; after a finished run, only once every
        rank got here (a rank that tears its group down while a peer still talks to it can abort
        that peer; after a failure nobody waits for ranks that may never come).  Unreachable
        DDP wrappers are collected first: one freed at interpreter exit can abort the process."""
        if self.owns_group:
            gc.collect()    # DDP reducers left in reference cycles go now, not after the group
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def training_forward(model: nn.Module, world: World, compile: bool) -> nn.Module:
    """What the training steps call: ``model`` in DDP (several ranks) and/or compiled.

    Call again after every removal event: the DDP wrapper is rebuilt over the new parameters
    (which broadcasts rank 0's replica) and Dynamo is reset, so the new shapes compile from
    scratch instead of counting towards Dynamo's recompile limit and falling back to eager.
    """
    forward = model
    if world.size > 1:
        device = next(model.parameters()).device
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        import torch._dynamo
        torch._dynamo.reset()
        forward = torch.compile(forward)
    return forward


class NullLog:
    """``MetricsLog``'s interface for ranks other than 0: writes nothing."""

    def write(self, record: dict, step: int) -> None:
        pass

    def offset(self) -> int:
        return 0

    def __exit__(self, *exc: Any) -> None:
        pass


@contextmanager
def main_only_logging(world: World, log: logging.Logger) -> Iterator[None]:
    """Only rank 0 logs progress lines (warnings still come from every rank)."""
    level = log.level
    if not world.main:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
