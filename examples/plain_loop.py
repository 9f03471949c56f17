"""DemP in your own training loop, on your own model: a few added lines.

The model is an ordinary CNN of the kind users bring (BatchNorm, in-place ReLU, a residual
block, a concatenation); the data are scikit-learn's 8x8 handwritten digits (real images, in
the package). DemP removes 30% of the ReLU units while it trains, and ``finish()`` makes the
last removal and keeps the BatchNorm statistics that serve the pruned network; the pruned model
is then saved and reloaded into a freshly built full-width ``MyNet``. Run:

    python examples/plain_loop.py            # a few seconds on 2 CPU cores
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import demp


class MyNet(nn.Module):
    """conv-bn-relu stem, a residual block, two branches concatenated, a linear head."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.left = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.right = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        return self.head(x.mean((2, 3)))


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1]: 1,500 for training, the rest for testing."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    return x[:1500], y[:1500], x[1500:], y[1500:]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_statistics: bool = False) -> float:
    """Test accuracy in eval mode (running BatchNorm statistics), or with batch statistics."""
    model.train(batch_statistics)
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def main(epochs: int = 10, batch_size: int = 64, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits()
    model = MyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                         batch_size=batch_size, shuffle=True)
    total_steps = epochs * len(loader)
    units_before = sum(s.width for s in demp.list_sites(model, x_train[:2]))

    # --- DemP: a probe of un-augmented training images with their targets, and a budget
    probe = [(x_train[:512], y_train[:512]), (x_train[512:1024], y_train[512:1024])]
    pruner = demp.DemonPruner(model, optimizer, example_inputs=x_train[:2], total_steps=total_steps,
                              probe=probe, target_units=0.3, target_by=0.7, reg_peak=5e-2, prune_every=10)
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step(loss)      # live-only noise; every prune_every steps a dead check + removal
    pruner.finish()                # last removal; keeps the BatchNorm statistics that serve the probe

    units_after = sum(s.width for s in demp.list_sites(model, x_train[:2]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mynet_pruned.pt"
        demp.save_pruned(model, path)                  # widths and tensors, written atomically; no code
        pruned = demp.load_pruned(path, model=MyNet())  # a fresh full-width MyNet, resized to the saved widths
    with torch.no_grad():
        reload_change = (pruned(x_test) - model.eval()(x_test)).abs().max().item()
    result = {"units_before": units_before, "units_after": units_after,
              "budget_reached": pruner.budget_reached, "budget_met": pruner.budget_met,
              "test_acc": accuracy(model, x_test, y_test),
              "test_acc_batch_statistics": accuracy(model, x_test, y_test, batch_statistics=True),
              "statistics_kept": pruner.final_statistics.kept, "reload_change": reload_change}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    r = main(parser.parse_args().epochs)
    print(f"units {r['units_before']} -> {r['units_after']} ({100 * r['budget_reached']:.1f}% removed, "
          f"budget {'met' if r['budget_met'] else 'NOT met'}); test accuracy {100 * r['test_acc']:.1f}% "
          f"(with batch statistics {100 * r['test_acc_batch_statistics']:.1f}%; BatchNorm statistics kept: "
          f"{r['statistics_kept']})")
