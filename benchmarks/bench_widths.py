"""Do odd layer widths cost CPU speed?  Step time of a pruned VGG-16-BN at its own widths and
rounded up to multiples of 8 and 16 (DemonPruner's ``round_to``), against the dense network.

The widths come from a run folder's final ``live_units`` (metrics.jsonl), e.g. a DemP run at 80%
of units removed, or from a built-in example.  Training steps (AdamW, batch 128, CIFAR-size
inputs, channels-last + bf16 autocast as in the CPU configs) are timed in alternating blocks in
one process; medians are reported as JSON, with speed-ups over dense.
Usage: python benchmarks/bench_widths.py [RUN_DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DENSE = [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128, 128, 128]   # VGG-16-BN w0.25
EXAMPLE = [9, 14, 16, 19, 18, 18, 13, 13, 13, 10, 9, 5, 8, 13, 13]   # DemP SGD at 80% (seed 0)
POOL_AFTER = {1, 3, 6, 9, 12}


def vgg(widths: list[int]) -> nn.Module:
    """VGG-16-BN for 32x32 inputs at the given 13 conv + 2 hidden linear widths."""
    layers: list[nn.Module] = []
    c = 3
    for i, width in enumerate(widths[:13]):
        layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        if i in POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        c = width
    h1, h2 = widths[13:15]
    layers += [nn.Flatten(), nn.Linear(c, h1), nn.BatchNorm1d(h1), nn.ReLU(),
               nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(), nn.Linear(h2, 10)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def round_up(widths: list[int], r: int) -> list[int]:
    return [-(-w // r) * r for w in widths]


def run_widths(run_dir: Path) -> list[int]:
    """Final live units per site of a run folder."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines()[::-1]:
        row = json.loads(line)
        if row.get("event") == "final":
            return list(row["live_units"].values())
    raise SystemExit(f"{run_dir}/metrics.jsonl has no final event")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", help="run folder of a VGG-16-BN w0.25 run (default: built-in widths)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pruned = run_widths(Path(args.run_dir)) if args.run_dir else EXAMPLE
    variants = {"dense": DENSE, "pruned": pruned, "round_to_8": round_up(pruned, 8), "round_to_16": round_up(pruned, 16)}
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    nets = {}
    for name, widths in variants.items():
        model = vgg(widths)
        nets[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {name: [] for name in nets}
    for name, (model, opt) in nets.items():
        for _ in range(3):
            step(model, opt)
    for _ in range(args.blocks):
        for name, (model, opt) in nets.items():
            t0 = time.perf_counter()
            for _ in range(5):
                step(model, opt)
            times[name].append((time.perf_counter() - t0) / 5)
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(json.dumps({name: {"widths": variants[name], "step_ms": round(ms[name], 1),
                             "speedup_vs_dense": round(ms["dense"] / ms[name], 2)} for name in nets}))


if __name__ == "__main__":
    main()
