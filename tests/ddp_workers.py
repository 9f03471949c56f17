"""Workers for the distributed tests: one training run of a tiny net on one rank of a gloo group.

Each function runs in a spawned process (rank, world size, port first) and saves what the
test compares to ``out/rank<r>.pt``.  Batches are global; a rank trains on its contiguous
share of each, as ``demp train`` does.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.integrations.ddp import PrunableDDP


class GroupNormNet(nn.Module):
    """Conv-GroupNorm(one channel per group)-ReLU twice: normalised per example, so the
    gradient of a global batch does not depend on how it is split over ranks."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(width, width)
        self.c2, self.n2 = nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(width, width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.n2(self.c2(x)))
        return self.head(x.mean((2, 3)))


class BatchNormNet(nn.Module):
    """Conv-BN-ReLU twice (statistics per rank, as in any DDP job without SyncBatchNorm)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.n2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.n2(self.c2(x)))
        return self.head(x.mean((2, 3)))


NETS = {"groupnorm": GroupNormNet, "batchnorm": BatchNormNet}


def dying(model: nn.Module) -> nn.Module:
    """Norm scales spread over (0.05, 1) and negative shifts: units die one after another."""
    with torch.no_grad():
        for m in (model.n1, model.n2):
            m.weight.copy_(torch.linspace(0.05, 1.0, len(m.weight)))
            m.bias.fill_(-0.2)
    return model


def batches(n: int, size: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def train_tiny(rank: int, world: int, port: int, out: str, net: str = "groupnorm", steps: int = 40,
               rank_probes: bool = False) -> None:
    """Train with DemonPruner (and PrunableDDP when world > 1); save weights, widths, history.

    ``rank_probes`` gives each rank a different probe, so only the agreement of the masks
    keeps the ranks' decisions equal.
    """
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = dying(NETS[net]())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # AdamW amplifies rounding (see test)
    probe = [x for x, _ in batches(2, 32, seed=100 + (rank if rank_probes else 0))]
    pruner = demp.DemonPruner(model, optimizer, probe[0][:2], steps, probe, reg_peak=0.2, noise_peak=1e-3,
                              prune_every=5, schedule="constant", recalibrate=net == "batchnorm")
    forward = PrunableDDP(model, pruner) if world > 1 else model
    for x, y in batches(steps, 32):
        x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        loss = F.cross_entropy(forward(x), y) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(loss)
    pruner.finish()
    torch.save({"state": model.state_dict(), "widths": pruner.widths,
                "events": sum(e.units_after < e.units_before for e in pruner.history)}, f"{out}/rank{rank}.pt")
    if world > 1:
        dist.barrier()     # no rank leaves while a peer may still talk to it
        dist.destroy_process_group()


def train_app(rank: int, world: int, port: int, out: str, overrides: list[str], resume: bool = False,
              stop_at_step: int = 0) -> None:
    """``demp train`` on one rank, as torchrun would start it; ``stop_at_step`` interrupts the
    run there (both ranks, like a killed job).  Saves the returned summary to ``out/rank<r>.pt``
    and, for sparse runs, every layer's mask after each sparsity step to ``out/masks<r>.pt``."""
    from demp.app import training
    from demp.app.config import load_config
    from demp.core.sparsity import Sparsifier
    masks = []
    real_sparse_step = Sparsifier.step

    def sparse_step(self):
        real_sparse_step(self)
        masks.append([m.clone() for m in self.masks.values()])
    Sparsifier.step = sparse_step
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    real_step = training.train_step

    def step(*args, **kwargs):
        if stop_at_step and args[-1] == stop_at_step:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    training.train_step = step
    try:
        summary = training.train(load_config(None, overrides), out_dir=f"{out}/run", resume=resume, progress=False)
    except KeyboardInterrupt:
        summary = None
    torch.save(summary, f"{out}/rank{rank}.pt")
    if masks:
        torch.save(masks, f"{out}/masks{rank}.pt")
