"""DemP under DDP: every rank removes the same units, and the DDP wrapper follows each removal.

Start it with torchrun (gloo on CPU, NCCL on GPUs):

    torchrun --standalone --nproc_per_node=2 examples/ddp_torchrun.py

Each rank trains on its share of every batch. ``DemonPruner`` AND-reduces the dead masks over
the ranks (a unit goes only if it is dead on every rank's probe), and ``PrunableDDP`` rebuilds
the wrapper after each removal event. Give every rank the same seed, so the noise stays identical.
"""
from __future__ import annotations

import argparse
import json
import os

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import demp
from demp.integrations.ddp import PrunableDDP
from plain_loop import MyNet, digits


def main(epochs: int = 6, seed: int = 0) -> dict:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.manual_seed(seed)                                   # the same model and noise on every rank
    x_train, y_train, x_test, y_test = (t.to(device) for t in digits())
    model = MyNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    batch = 64
    steps_per_epoch = len(x_train) // batch
    probe = [(x_train[:512], y_train[:512])]                  # each rank may have its own probe
    pruner = demp.DemonPruner(model, optimizer, example_inputs=x_train[:2], total_steps=epochs * steps_per_epoch,
                              probe=probe, target_units=0.2, target_by=0.6, reg_peak=5e-2, prune_every=10, seed=seed)
    ddp = PrunableDDP(model, pruner, device_ids=[device.index] if cuda else None)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch].tensor_split(world)[rank]   # this rank's share
            x, y = x_train[idx], y_train[idx]
            loss = F.cross_entropy(ddp(x), y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step(loss)
    pruner.finish()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    widths = torch.tensor(list(pruner.widths.values()), device=device)
    same = widths.clone()
    dist.broadcast(same, 0)
    result = {"rank": rank, "world": world, "units": int(widths.sum()), "same_widths_as_rank0": bool(torch.equal(widths, same)),
              "budget_met": pruner.budget_met, "test_acc": acc}
    del ddp                # free DDP's reducer while the process group still exists
    dist.barrier()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=None, help="folder for each rank's result as rank<r>.json")
    args = parser.parse_args()
    r = main(args.epochs)
    if args.out:
        (Path(args.out) / f"rank{r['rank']}.json").write_text(json.dumps(r))
    print(f"rank {r['rank']}/{r['world']}: {r['units']} units left (same widths as rank 0: {r['same_widths_as_rank0']}; "
          f"budget {'met' if r['budget_met'] else 'NOT met'}), test accuracy {100 * r['test_acc']:.1f}%", flush=True)
