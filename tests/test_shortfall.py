"""A budget's shortfall is explained by what the run showed: each cause produced by a run that has it."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.core.shortfall import Observed, causes


def observed(**changes) -> Observed:
    base = dict(measure="units", removed=0.1, dead=0.1, target=0.5, tied_dead=0, gate_step=1e-4, at_ceiling=False,
                ceiling=4.0, checks=10, optimizer="AdamW", adaptive=True, lr=3e-3, start_lr=3e-3, prune_every=10,
                target_by=0.3)
    return Observed(**{**base, **changes})


def test_each_observation_gives_its_own_cause():
    assert "tied to live ones" in causes(observed(tied_dead=12, dead=0.3))[0]
    at_step_size = causes(observed(gate_step=2.9e-3, at_ceiling=True))
    assert "lost in the optimizer" in at_step_size[0] and "AdamW at lr 0.003" in at_step_size[0]
    assert not any("start from a larger reg_peak" in c for c in at_step_size)   # lambda would change nothing
    lr_gone = causes(observed(lr=1e-8, at_ceiling=True))
    assert "learning rate is 1e-08 (from 0.003)" in lr_gone[0] and len(lr_gone) == 1
    assert "ceiling" in causes(observed(adaptive=False, gate_step=2.9e-3, at_ceiling=True))[0]   # SGD: lambda sets the step
    assert "ceiling" in causes(observed(at_ceiling=True))[0]
    assert "dead check" in causes(observed(checks=2))[0]
    assert "too little time" in causes(observed())[0]


class Residual(nn.Module):
    """stem -> relu(a + f(a)) -> head: the two ReLU sites share one residual stream."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.f = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        a = self.stem(x)
        return self.head(self.relu(a + self.f(a)))


def run(model, opt, steps, x, y=None, **options):
    """Train ``steps`` steps (a classification loss when ``y`` is given); the warnings of the run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = demp.DemonPruner(model, opt, x[:2], total_steps=steps, probe=[x], **options)
        for _ in range(steps):
            loss = (F.cross_entropy(model(x), y) if y is not None else model(x).sum() * 0) + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
        pruner.finish()
    return pruner, [str(w.message) for w in caught]


def test_dead_units_tied_to_live_ones_count_as_dead_and_are_named():
    torch.manual_seed(0)
    model = Residual()
    with torch.no_grad():   # 4 channels dead after the addition, alive in the stem: tied, cannot go
        model.f[1].weight[:4] = 0.0
        model.f[1].bias[:4] = -100.0
    x = torch.randn(64, 4)
    pruner, said = run(model, torch.optim.SGD(model.parameters(), lr=0.0), 20, x, reg_peak=1e-3,
                       prune_every=5, target_units=0.25)
    assert pruner.budget_met and pruner.budget_reached == 0.0 and pruner.dead_fraction == pytest.approx(0.25)
    assert pruner.tied_dead == 4 and pruner.dead_kept == {"relu": 4}
    short = [m for m in said if "not in removal" in m]
    assert len(short) == 1 and "4 dead units are tied to live ones" in short[0]


def weak_push(steps, **options):
    """A small classifier trained at lr 0.1 under a penalty far too weak to kill anything."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(128, 4), torch.randint(0, 3, (128,))
    return run(model, torch.optim.SGD(model.parameters(), lr=0.1), steps, x, y, reg_peak=1e-7,
               noise_peak=0.0, target_units=0.5, **options)


def test_lambda_at_its_ceiling_while_the_gates_move():
    pruner, said = weak_push(120, prune_every=4, target_by=0.3)
    assert pruner.budget_gave_up and pruner.budget.at_ceiling
    short = [m for m in said if "budget not met" in m]
    assert len(short) == 1 and "ceiling" in short[0] and "lost in the optimizer" not in short[0]


def test_too_few_checks():
    pruner, said = weak_push(40, prune_every=40, target_by=0.5)
    short = [m for m in said if "budget not met" in m]
    assert len(short) == 1 and "dead check(s) ran while the budget was open" in short[0]
