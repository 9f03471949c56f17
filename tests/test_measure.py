"""What a run measures (demp.app.measure): the architecture's size, accuracy and loss over a
loader, live units on the probe, and the summary's ratios."""
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn

from demp.app.measure import Arch, evaluate, live_units, run_summary


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_arch_counts_units_params_and_flops():
    arch = Arch.measure(net(), torch.randn(2, 4))
    assert (arch.units, arch.params, arch.fwd_flops) == (6, 4 * 6 + 6 + 6 * 3 + 3, 2 * (4 * 6 + 6 * 3))
    assert arch.train_flops == 3 * arch.fwd_flops - 2 * 4 * 6    # no gradient for the input
    assert arch.widths == {"1": 6}


def test_evaluate_and_live_units():
    model = net()
    x = torch.randn(64, 4)
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[0].bias[:2] = -1.0                 # two units dead
        y = model(x).argmax(1)                   # labels the model gets right
        expected = float(nn.functional.cross_entropy(model(x), y))
    acc, loss = evaluate(model, [(x[:32], y[:32]), (x[32:], y[32:])], nullcontext)
    assert acc == 1.0 and loss == pytest.approx(expected, rel=1e-5)
    assert model.training                        # the mode is restored
    assert live_units(model, [x]) == {"1": 4}


def test_run_summary_ratios():
    arch = Arch(units=50, params=300, fwd_flops=20, train_flops=60, widths={"a": 50})
    initial = {"units": 100, "params": 1000, "fwd_flops": 80}
    counters = {"best_acc": 0.9, "train_flops": 1e9, "wall_s": 10.0, "eval_s": 1.0, "prune_events": 3}
    s = run_summary(initial, arch, {"test_acc": 0.8, "test_loss": 0.5, "live_units": {"a": 48}}, counters, {"x": 1})
    assert (s["units_remaining"], s["params_remaining"], s["fwd_flops_remaining"]) == (0.5, 0.3, 0.25)
    assert s["x"] == 1 and s["live_units_final"] == {"a": 48} and math.isclose(s["train_flops"], 1e9)
