"""Time per batch spent producing CIFAR-10 data (BatchLoader) against one training step of a small CNN.

Prints one JSON line: data_s_per_batch, step_s, data_fraction = data / (data + step), plus
the load time (decoding on the first run, the .npy cache afterwards).  Run:

    python benchmarks/bench_data.py [--root PATH] [--batch-size 128] [--resize 64]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

from demp.app.data import Augment, BatchLoader, load_dataset


def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """A small VGG-style conv net (3 conv-BN-ReLU stages), typical of the CPU experiments."""
    def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*stage(in_channels, 32, 1), *stage(32, 64, 2), *stage(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def time_data(loader: BatchLoader, batches: int) -> float:
    """Mean seconds per ``next()`` on the loader, after one warm-up batch."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Mean seconds per forward + backward + SGD step on one fixed batch, after one warm-up step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    """Parse arguments, run both timings, print the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="CIFAR-10 zip, image folder or python batches")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100, help="batches timed for the data side")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    parser.add_argument("--resize", type=int, default=None, help="upscale images, e.g. 64")
    args = parser.parse_args()

    start = time.perf_counter()
    splits = load_dataset("cifar10", root=args.root, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - start
    loader = BatchLoader(splits.train_x, splits.train_y, args.batch_size, mean=splits.mean, std=splits.std,
                         train=True, augment=Augment(resize=args.resize), drop_last=True)
    data_s = time_data(loader, min(args.batches, len(loader) - 1))
    x, y = next(iter(loader))
    model = small_cnn(splits.in_channels, splits.num_classes).train()
    step_s = time_steps(model, x, y, args.steps)
    print(json.dumps({
        "data_s_per_batch": round(data_s, 5), "step_s": round(step_s, 5),
        "data_fraction": round(data_s / (data_s + step_s), 4), "batch_size": args.batch_size,
        "image_size": x.shape[-1], "load_s": round(load_s, 3), "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
