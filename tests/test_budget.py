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
    assert c.update(100, dead=0.3) < 1e-2          # planned 0.05: far ahead
    lam = c.lam
    assert c.update(900, dead=0.3) > lam           # planned 0.45: behind
    assert c.update(950, dead=0.5) == 0.0 and c.met
    assert c.update(2000, dead=0.5) == 0.0         # met for good
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
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pruner.finish() is None and len(pruner.history) == 1
    assert pruner.dead_kept == {next(iter(pruner.widths)): 2}   # surplus dead units stay, inert
    # half of the units died against a budget of a quarter: reported, not hidden
    assert pruner.dead_fraction == pytest.approx(0.5) and pruner.overshoot == pytest.approx(0.24)
    assert any("overshot the budget: 50.0% of units dead against a target of 25.0%" in str(w.message) for w in caught)


def test_deaths_ahead_of_the_plan_bring_lambda_down_before_the_peak():
    """Deaths count whether or not they were removed; ahead of the plan lambda drops at once,
    even while the schedule still rises (hold_until), and rises back as the plan catches up."""
    c = BudgetController(0.5, 1000, 1.0, hold_until=600)
    assert c.update(100, dead=0.0) == 1.0                      # behind, but before the peak: left alone
    down = c.update(200, dead=0.3)                             # planned 0.1: far ahead
    assert down < 0.5
    assert c.update(400, dead=0.3) > down                       # planned 0.2: the gap narrows
    assert c.update(700, dead=0.5) == 0.0 and c.met


def test_a_collapse_stops_the_push_and_the_removals():
    """Outputs that stop depending on the input at a check: with a budget, lambda and noise go
    to zero, nothing more is removed, and the collapse is recorded and warned about once."""
    import warnings
    import torch.nn as nn
    import demp
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 4)
    pruner = demp.DemonPruner(model, torch.optim.SGD(model.parameters(), lr=0.0), x[:2], total_steps=40,
                              probe=[x], prune_every=5, target_units=0.5, reg_peak=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(40):
            if step == 12:
                with torch.no_grad():   # the network stops looking at its input; 8 units dead too
                    model[3].weight.zero_()
                    model[1].weight[:8] = 0.0
                    model[1].bias[:8] = -1.0
            pruner.penalty()
            pruner.step()
        pruner.finish()
    assert pruner.collapsed is not None and pruner.collapsed.step == 15 and pruner.collapsed.signal == "output spread"
    assert pruner.budget.stopped and pruner.budget_done and pruner.lam == 0.0 and pruner.sigma == 0.0
    assert pruner.history[-1].step == 15 and pruner.history[-1].units_after == 16   # nothing removed at or after it
    said = [str(w.message) for w in caught if "collapsed" in str(w.message)]
    assert len(said) == 1 and "the push stops here" in said[0]


def test_gives_up_at_the_deadline_rather_than_collapse():
    """Out of reach (the cliff is 100x the start): lambda stops at the ceiling, then at twice
    by_step the controller gives up, so the survivors recover."""
    c, path = simulate(cliff(1.0), target=0.5, lam0=1e-2)
    assert max(lam for _, _, lam in path) == pytest.approx(1e-2 * c.ceiling)
    assert c.short and not c.met and c.done and c.at_ceiling and c.lam == 0.0
    assert all(lam == 0.0 for step, _, lam in path if step >= c.deadline * c.by_step)


def test_a_budget_within_tolerance_counts_as_met():
    c = BudgetController(0.5, 100, 1.0, tolerance=0.01)
    assert c.update(10, dead=0.48) > 0 and not c.met
    assert c.update(20, dead=0.492) == 0.0 and c.met and c.done and not c.short
    with pytest.raises(DempError, match="tolerance"):
        BudgetController(0.5, 100, 1.0, tolerance=0.6)


class _TwoInputs(torch.nn.Module):
    """Two conv branches on two inputs of different sizes: units of ``a`` cost 16x those of ``b``."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.ca, self.ba = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.cb, self.bb = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(16, 2)

    def forward(self, x, z):
        a = torch.relu(self.ba(self.ca(x))).mean((2, 3))
        b = torch.relu(self.bb(self.cb(z))).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def _half_dead(model):
    with torch.no_grad():
        for bn in (model.ba, model.bb):
            bn.weight[:4] = 0.0
            bn.bias[:4] = -1.0


def test_flops_budget_with_tuple_inputs_spends_the_room_by_real_cost():
    """A FLOPs budget on a two-input model (tuple example inputs, counted, not read as 0): each dead
    unit costs its own FLOPs; removal never passes the budget and leaves no dead unit that fits."""
    import demp
    from demp.core.costs import site_costs
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    _half_dead(model)
    x, z = torch.randn(32, 3, 8, 8), torch.randn(32, 3, 2, 2)
    costs = site_costs(model, (x[:1], z[:1]))
    cost_a, cost_b = costs["/relu#0"].flops, costs["/relu#1"].flops
    total = demp.core.flops.forward_flops(model, (x[:1], z[:1]))
    target = (2 * cost_a + 3 * cost_b) / total + 1e-6        # room: 2 costly + 3 cheap units
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, (x[:1], z[:1]), total_steps=100, probe=[((x, z),)],
                              reg_peak=1e-2, prune_every=1000, target_flops=target, recalibrate=False,
                              budget_tolerance=0.0)
    assert pruner.initial["flops"] == total > 0
    pruner.prune()
    removed = 1 - demp.core.flops.forward_flops(model, (x[:1], z[:1])) / total
    assert removed <= target + 1e-9
    left = target * total - (total - demp.core.flops.forward_flops(model, (x[:1], z[:1])))
    assert left < cost_b or not any(pruner.dead_kept.values())   # no dead unit that still fits stayed
    assert model.ca.out_channels + model.cb.out_channels < 16


def test_giving_up_is_not_meeting_and_is_reported():
    import warnings
    import torch.nn as nn
    import demp
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, x[:2], total_steps=40, probe=[x], reg_peak=1e-2,
                              prune_every=5, target_units=0.5, target_by=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(40):
            pruner.penalty()
            pruner.step()
        pruner.finish()
    assert pruner.budget_gave_up and not pruner.budget_met and pruner.budget_done
    assert pruner.budget_reached == 0.0 and pruner.lam == 0.0 and pruner.sigma == 0.0
    short = [str(w.message) for w in caught if "budget not met" in str(w.message)]
    assert len(short) == 1 and "0.0% of units removed (0.0% dead) against a target of 50.0%" in short[0]
    # the observed cause: an optimizer at lr 0 moves no gate, whatever lambda is
    assert "lost in the optimizer: SGD's learning rate is 0" in short[0] and "reg_peak" not in short[0]


def test_checks_keep_within_their_share_of_the_time(monkeypatch):
    """check_share: a check runs only while checks have taken at most that share of the elapsed
    time (a fake clock: a step takes 1 s, a check 0.5 s)."""
    import torch.nn as nn
    import demp
    from demp.core import pruner as pruner_module
    now = [0.0]
    monkeypatch.setattr(pruner_module, "clock", lambda: now[0])
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def run(share):
        p = demp.DemonPruner(model, opt, x[:2], total_steps=400, probe=[x], prune_every=1,
                             check_share=share)
        scan = p.scan

        def slow_scan(*args):
            now[0] += 0.5
            return scan(*args)
        p.scan = slow_scan
        start = now[0]
        for _ in range(400):
            now[0] += 1.0
            p.step()
        return len(p.history), sum(e.check_s for e in p.history), now[0] - start

    checks, spent, elapsed = run(0.05)
    assert 30 < checks < 50 and spent <= 0.05 * elapsed + 0.5     # 400 s x 5% = about 40 checks
    assert run(None)[0] == 400


def test_rounded_widths_and_a_flops_budget_still_cut_the_costly_site():
    """round_to 4 and a FLOPs budget: the budget picks whole steps of 4, costliest first, instead of
    a share that rounding then throws away (which left VGG's first layers whole in a first try)."""
    import demp
    from demp.core.costs import site_costs
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    with torch.no_grad():
        for bn in (model.ba, model.bb):
            bn.weight[:5] = 0.0
            bn.bias[:5] = -1.0
    x, z = torch.randn(32, 3, 8, 8), torch.randn(32, 3, 2, 2)
    costs = site_costs(model, (x[:1], z[:1]))
    total = demp.core.flops.forward_flops(model, (x[:1], z[:1]))
    room = 4 * costs["/relu#0"].flops + 4 * costs["/relu#1"].flops - 1.0     # not quite both steps
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, (x[:1], z[:1]), total_steps=100, probe=[((x, z),)],
                              reg_peak=1e-2, prune_every=1000, target_flops=room / total, recalibrate=False,
                              budget_tolerance=0.0, round_to=4)
    pruner.prune()
    assert (model.ca.out_channels, model.cb.out_channels) == (4, 8)


class _Coupled(torch.nn.Module):
    """An identity residual ties the stem's channels to the block's; a side branch is free."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.cs, self.bs = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = torch.relu(self.b0(self.c0(x)))
        x = torch.relu(self.b1(self.c1(x)) + x)
        side = torch.relu(self.bs(self.cs(x)))
        return self.fc(torch.cat([x, side], 1).mean((2, 3)))


def test_a_budget_is_spent_on_units_that_can_go():
    """Dead stem units tied through the identity residual to live ones cannot go; the budget
    must take the side branch's dead units instead of stalling on them (a plain-loop run once
    ended at 28% of a 30% budget with 17 removable dead units left)."""
    import demp
    torch.manual_seed(0)
    model = _Coupled().eval()
    with torch.no_grad():
        model.b0.weight[:4] = 0.0          # stem units 0-3 dead, but their residual partners live
        model.b0.bias[:4] = -1.0
        model.bs.weight[:4] = 0.0          # side units 0-3 dead and free
        model.bs.bias[:4] = -1.0
    x = torch.randn(32, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, x[:2], total_steps=100, probe=[x], reg_peak=1e-2, prune_every=1000,
                              target_units=3 / 24, recalibrate=False, budget_tolerance=0.0)
    pruner.prune()
    assert model.cs.out_channels == 5 and model.c0.out_channels == 8 and pruner.budget_met


def test_spend_takes_equal_shares_in_whole_steps_then_fills_from_the_costliest():
    from demp.core.budget import removable_counts, spend
    dead = {"a": torch.tensor([True] * 6 + [False] * 10), "b": torch.tensor([True] * 10 + [False] * 22)}
    assert removable_counts(dead) == {"a": 6, "b": 10}
    assert removable_counts(dead, round_to=8) == {"a": 0, "b": 8}       # 16 -> 16 (10 live), 32 -> 24
    widths, cost = {"a": 16, "b": 32}, {"a": 10.0, "b": 1.0}
    assert spend(1000, {"a": 6, "b": 10}, cost, widths) == {"a": 6, "b": 10}       # everything fits
    # room 35: half of each (a 3, b 5 = 35), nothing left to fill
    assert spend(35, {"a": 6, "b": 10}, cost, widths) == {"a": 3, "b": 5}
    # room 42 in steps of 4: the shares (3.8 units each) round down to 0; the fill takes 4 of the
    # costly site (40) and then nothing more fits
    assert spend(42, {"a": 8, "b": 8}, cost, widths, round_to=4) == {"a": 4, "b": 0}


# ----------------------------------------------------------------------------- spending by dependency group

class _Block(torch.nn.Module):
    """relu(f(x) + x): the block's output channels are the stream's, tied to the stem's."""

    def __init__(self, w):
        super().__init__()
        nn = torch.nn
        self.f = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                               nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.f(x) + x)


def _residual_net(w=8):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         _Block(w), _Block(w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 4))


def _kill(bn, channels):
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = -1.0


def _requests(monkeypatch):
    """Record every removal the pruner asks for: (units requested, units removed)."""
    from demp.core import pruner as pruner_module
    seen, real = [], pruner_module.remove_units

    def recorded(model, dead, *args, **kwargs):
        report = real(model, dead, *args, **kwargs)
        seen.append((sum(int(m.sum()) for m in dead.values()), report.units_removed))
        return report
    monkeypatch.setattr(pruner_module, "remove_units", recorded)
    return seen


def _untrained_flops_budget(model, target, monkeypatch):
    """A FLOPs budget spent on the units dead from the start (lr 0): the pruner, the removals it
    asked for (units asked, units removed) and the fraction of forward FLOPs removed."""
    import demp
    from demp.core.flops import forward_flops
    x = torch.randn(32, 3, 8, 8)
    seen = _requests(monkeypatch)
    flops0 = forward_flops(model, x[:2])
    pruner = demp.DemonPruner(model, torch.optim.AdamW(model.parameters(), lr=0.0), x[:2], total_steps=20,
                              probe=[x], prune_every=5, target_flops=target, reg_peak=1e-3)
    for _ in range(20):
        pruner.penalty()
        pruner.step()
    pruner.finish()
    return pruner, seen, 1 - forward_flops(model, x[:2]) / flops0


def test_a_flops_budget_spends_coupled_channels_at_every_site_they_are_tied_to(monkeypatch):
    """Stream channels 0-2 dead at all three sites they are tied to, inner units dead in both
    blocks: the budget takes whole stream channels and inner units, every request is accepted,
    and it lands within one unit's cost of the target (here a unit is 4-6% of the FLOPs; a
    second check tops up what the first one's estimate left: removing both ends of a conv
    saves less than their two costs)."""
    torch.manual_seed(0)
    model = _residual_net()
    _kill(model[1], [0, 1, 2])
    for block in (model[3], model[4]):
        _kill(block.f[4], [0, 1, 2, 3])
        _kill(block.f[1], [0, 1, 2, 3, 4])
    pruner, seen, removed = _untrained_flops_budget(model, 0.5, monkeypatch)
    assert len(seen) >= 2 and all(asked == removed for asked, removed in seen)     # no refused request
    assert pruner.budget_met and 0.5 - 0.06 <= removed <= 0.5 + 1e-9
    widths = pruner.widths
    assert widths["2"] == widths["3.relu"] == widths["4.relu"] < 8        # the stream lost the same channels


def test_our_resnet_meets_a_flops_budget_without_a_refused_request(monkeypatch):
    """Half of every block's inner units and a quarter of the stem's dead: the budget lands
    within one unit's cost, every request accepted."""
    from demp.app.models import create_model
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, in_channels=3, width=0.25, image_size=8)
    for name, m in model.named_modules():
        if name.endswith("bn1") or name == "stem.bn":
            _kill(m, list(range(m.num_features // (4 if name == "stem.bn" else 2))))
    pruner, seen, removed = _untrained_flops_budget(model, 0.3, monkeypatch)
    assert seen and all(asked == removed for asked, removed in seen)
    assert pruner.budget_met and 0.3 - 0.02 <= removed <= 0.3 + 1e-9
