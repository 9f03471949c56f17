"""Two short budgeted runs that once ended with a dead network reported as a met budget; prints JSON.

1. ``main_job``: the main job, shorter (``demp train --set data.subset=10000 --set train.epochs=2
   --set method.prune_every=10``).
2. ``residual_flops``: a user's residual CNN (plain ``relu(f(x) + x)`` blocks) on 5,000 CIFAR-10
   images, AdamW lr 1e-2 constant, ``target_flops=0.5``, ``prune_every=10``, 237 steps.

For each: test accuracy, units dead and kept, what was removed, whether the budget was met, a
collapse, and the warnings printed.  Needs Fashion-MNIST (``make data``) and CIFAR-10 (DEMP_DATA).

    DEMP_DATA=.../cifar10-jpeg.zip python benchmarks/budget_health.py [--threads 2] [--only residual_flops]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.app.config import load_config
from demp.app.data import load_dataset, normalize
from demp.app.training import train
from demp.core.flops import forward_flops


class Block(nn.Module):
    """relu(f(x) + x) with f = conv-BN-ReLU-conv-BN (the residual stream is tied across blocks)."""

    def __init__(self, width: int):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                               nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.f(x) + x)


def residual_net(width: int = 32, blocks: int = 4, classes: int = 10) -> nn.Module:
    """Stem, ``blocks`` residual blocks (a 2x2 pool after every second), global pool, linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for i in range(blocks):
        layers.append(Block(width))
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def _warnings(caught: list) -> list[str]:
    return [str(w.message) for w in caught if "DemP" in str(w.message)]


def residual_flops(threads: int, seed: int = 0) -> dict:
    """Case 2: the residual CNN to a FLOPs budget in a plain loop."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    d = load_dataset("cifar10", subset=5000)
    x, y = normalize(d.train_x, d.mean, d.std), d.train_y
    xt, yt = normalize(d.test_x, d.mean, d.std), d.test_y
    model = residual_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    batch, steps = 64, 237
    probe = list(x[:1024].split(256))
    flops0 = forward_flops(model, x[:2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = demp.DemonPruner(model, opt, x[:2], total_steps=steps, probe=probe, target_flops=0.5,
                                  prune_every=10, reg_peak=5e-2, seed=seed)
        step = 0
        while step < steps:
            order = torch.randperm(len(x))
            for i in range(0, len(x) - batch + 1, batch):
                idx = order[i:i + batch]
                model.train()
                loss = F.cross_entropy(model(x[idx]), y[idx]) + pruner.penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
                pruner.step(loss)
                step += 1
                if step >= steps:
                    break
        pruner.finish()
    model.eval()
    with torch.no_grad():
        acc = sum(int((model(a).argmax(1) == b).sum()) for a, b in zip(xt.split(500), yt.split(500))) / len(yt)
    collapsed = getattr(pruner, "collapsed", None)   # getattr: the script also measures older versions
    return {"test_acc": acc, "units": sum(pruner.widths.values()), "dead_kept": sum(pruner.dead_kept.values()),
            "tied_dead": getattr(pruner, "tied_dead", None),
            "fwd_flops_removed": 1 - forward_flops(model, x[:2]) / flops0,
            "dead_fraction": getattr(pruner, "dead_fraction", None), "budget_met": pruner.budget_met,
            "collapsed": asdict(collapsed) if collapsed else None, "warnings": _warnings(caught)}


def main_job(threads: int) -> dict:
    """Case 1: the main job, shorter, through ``demp train``."""
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(None, ["data.subset=10000", "train.epochs=2", "method.prune_every=10",
                                 f"threads={threads}", f"out={out}/run"])
        s = train(cfg, progress=False)
    keys = ("test_acc", "best_acc", "units_final", "units_remaining", "params_remaining", "fwd_flops_remaining",
            "reached", "dead", "overshoot", "met", "stopped", "causes", "collapsed")
    return {**{k: s.get(k) for k in keys}, "warnings": _warnings(caught)}


CASES = {"main_job": main_job, "residual_flops": residual_flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=sorted(CASES))
    args = ap.parse_args()
    names = [args.only] if args.only else list(CASES)
    print(json.dumps({n: CASES[n](args.threads) for n in names}, indent=2))


if __name__ == "__main__":
    main()
