"""The budget controller on synthetic death curves, and budgeted DemP on real data."""
import math

import pytest
import torch

from demp import DempError
from demp.core.budget import BudgetController


def simulate(curve, target=0.5, by_step=3000, every=100, steps=10000, lam0=1e-3):
    """(The starting lambda must be within the ceiling's reach of the cliff, as in real use.)"""
    """Checks every ``every`` steps; deaths are absorbing and capped at the target (as the
    pruner caps removal).  Returns the controller and the (step, achieved, lambda) path."""
    c = BudgetController(target, by_step, lam0)
    achieved, path = 0.0, []
    for step in range(0, steps + 1, every):
        achieved = max(achieved, min(curve(c.lam), target))
        c.update(step, achieved)
        path.append((step, achieved, c.lam))
    return c, path


def cliff(lam_c: float, width: float = 0.15, top: float = 0.95):
    """Fraction dead as a steep function of lambda (a sigmoid in log lambda)."""
    return lambda lam: 0.0 if lam <= 0 else top / (1 + math.exp(-(math.log(lam) - math.log(lam_c)) / width))


@pytest.mark.parametrize("start", [1 / 3, 1.0, 2.0])      # starting lambda / the cliff's lambda
@pytest.mark.parametrize("target", [0.5, 0.8])
def test_reaches_the_target_from_a_rough_start(start, target):
    lam_c = 3e-2
    c, path = simulate(cliff(lam_c), target=target, lam0=start * lam_c)
    assert max(lam for _, _, lam in path) <= start * lam_c * c.ceiling
    met_at = next(step for step, a, _ in path if a >= target - 1e-9)
    assert c.met and c.lam == 0.0
    assert met_at <= 1.5 * 3000                       # close to the planned time
    assert all(lam == 0.0 for step, _, lam in path if step >= met_at)   # stops pushing


def test_deaths_follow_the_plan_on_a_gradual_curve():
    """Where death responds gradually to lambda, removal tracks the linear plan."""
    c, path = simulate(lambda lam: min(0.95, 20 * lam), target=0.6, lam0=5e-3)
    mid = [a for step, a, _ in path if 1000 <= step <= 2500]
    planned = [c.planned(step) for step, _, _ in path if 1000 <= step <= 2500]
    assert max(abs(a - p) for a, p in zip(mid, planned)) < 0.12


def test_ahead_of_plan_lowers_lambda_and_behind_raises_it():
    c = BudgetController(0.5, 1000, 1e-2)
    assert c.update(100, achieved=0.3) < 1e-2          # planned 0.05: far ahead
    lam = c.lam
    assert c.update(900, achieved=0.3) > lam           # planned 0.45: behind
    assert c.update(950, achieved=0.5) == 0.0 and c.met
    assert c.update(2000, achieved=0.5) == 0.0         # met for good
    assert c.allowance(0.45) == pytest.approx(0.05) and c.allowance(0.6) == 0.0


def test_state_round_trip_and_bad_settings():
    c = BudgetController(0.5, 1000, 1e-2)
    c.update(500, 0.1)
    twin = BudgetController(0.5, 1000, 1e-2)
    twin.load_state_dict(c.state_dict())
    assert twin == c
    for args, match in [((0.0, 10, 1.0), "fraction"), ((0.5, 0, 1.0), "by_step"), ((0.5, 10, 0.0), "lambda")]:
        with pytest.raises(DempError, match=match):
            BudgetController(*args)


# ----------------------------------------------------------------------------- on real data

sklearn = pytest.importorskip("sklearn.datasets")


def test_budgeted_demp_meets_its_units_target():
    target = 0.3
    """No lambda to guess: the final network has target +- 3 points of its units removed, never more."""
    import demp
    from test_pruner import STEPS, make_net, train
    d = sklearn.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    pruner = demp.DemonPruner(model, opt, x[:2], total_steps=STEPS, probe=[x[:512]], reg_peak=0.1,
                              prune_every=10, target_units=target, target_by=0.5)
    units0 = sum(s.width for s in demp.list_sites(model, x[:2]))
    train(model, opt, pruner, x, y, 0, STEPS)
    pruner.finish()
    removed = 1 - sum(s.width for s in demp.list_sites(model, x[:2])) / units0
    assert target - 0.03 <= removed <= target + 1e-9, removed
    assert pruner.budget.met and pruner.lam == 0.0 and pruner.sigma == 0.0


def test_a_met_budget_stops_checks_and_pushing():
    """Once the budget is met: lambda and sigma are zero and no more dead checks run (finish too)."""
    import torch.nn as nn
    import demp
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():   # half of the hidden units dead from the start
        model[1].weight[:4] = 0.0
        model[1].bias[:4] = -1.0
    x = torch.randn(64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, x[:2], total_steps=100, probe=[x], reg_peak=1e-2,
                              prune_every=5, target_units=0.25)
    for _ in range(20):
        pruner.penalty()
        pruner.step()
    assert len(pruner.history) == 1 and pruner.history[0].units_after == 6   # 2 of 8 units: the budget
    assert pruner.budget_met and pruner.lam == 0.0 and pruner.sigma == 0.0
    assert pruner.finish() is None and len(pruner.history) == 1
    assert pruner.dead_kept == {next(iter(pruner.widths)): 2}   # surplus dead units stay, inert


def test_gives_up_at_the_deadline_rather_than_collapse():
    """Out of reach (the cliff is 100x the start): lambda stops at the ceiling, then at twice
    by_step the controller gives up, so the survivors recover."""
    c, path = simulate(cliff(1.0), target=0.5, lam0=1e-2)
    assert max(lam for _, _, lam in path) == pytest.approx(1e-2 * c.ceiling)
    assert c.short and not c.met and c.done and c.at_ceiling and c.lam == 0.0
    assert all(lam == 0.0 for step, _, lam in path if step >= c.deadline * c.by_step)
