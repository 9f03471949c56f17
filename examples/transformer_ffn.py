"""DemP on a transformer: the FFN's hidden ReLU units die and go, attention and LayerNorms stay.

A pre-LayerNorm block (LN -> attention, LN -> Linear -> ReLU(inplace) -> Linear) reads each 8x8
digit of scikit-learn's digits as 8 tokens of 8 pixels. No norm gates the FFN's hidden units,
so DemP's penalty shrinks the rows of the Linear layer that produces them (a group L1) and
leaves the LayerNorm scales alone; dead hidden units are removed from both Linear layers and
from the optimizer state. Run:

    python examples/transformer_ffn.py       # a few seconds on 2 CPU cores
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from plain_loop import digits


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 128, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.up, self.act, self.down = nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.down(self.act(self.up(self.ln2(x))))
        return self.head(x.mean(1))


def main(epochs: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = (t.squeeze(1) if t.dim() == 4 else t for t in digits())
    model = TinyTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=64,
                                         shuffle=True)
    probe = [(x_train[:750], y_train[:750]), (x_train[750:], y_train[750:])]
    with warnings.catch_warnings():    # the LayerNorms gate no ReLU unit: said once, expected here
        warnings.simplefilter("ignore", UserWarning)
        pruner = demp.DemonPruner(model, optimizer, example_inputs=x_train[:2], total_steps=epochs * len(loader),
                                  probe=probe, target_units=0.5, target_by=0.6, reg_peak=2e-2, prune_every=10)
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step(loss)
    pruner.finish()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"hidden_before": 128, "hidden_after": model.up.out_features, "down_inputs": model.down.in_features,
            "budget_met": pruner.budget_met, "test_acc": acc}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    r = main(parser.parse_args().epochs)
    print(f"FFN hidden units {r['hidden_before']} -> {r['hidden_after']} (budget {'met' if r['budget_met'] else 'NOT met'}); "
          f"test accuracy {100 * r['test_acc']:.1f}%")
