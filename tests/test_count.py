"""The count method (demp.app.methods.count): DemP that counts dead units at each check (with
statistics re-estimated as DemP's check does) and removes nothing; overlap of dead sets."""
import pytest
import torch
import torch.nn as nn

from demp.app.methods.count import DeathCounter, compare_dead, overlap_fraction


def test_overlap_counts_stayed_revived_and_new():
    before = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False])}
    now = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([True, False])}
    assert compare_dead(before, now) == (2, 1, 1)
    assert overlap_fraction(2, 1) == pytest.approx(2 / 3)
    assert overlap_fraction(0, 0) is None
    assert compare_dead({}, now) == (0, 0, 3)       # first check: everything dead is new


def _counter() -> tuple[nn.Module, DeathCounter, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    probe = [torch.randn(32, 4) for _ in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, DeathCounter(model, opt, probe[0][:2], 10, probe, reg_peak=0.0, noise_peak=0.0), probe


def test_counter_counts_dead_units_and_removes_nothing():
    model, counter, _ = _counter()
    bn = model[1]
    with torch.no_grad():
        bn.weight[:2] = 0.0
        bn.bias[:2] = -1.0                       # units 0, 1 dead whatever the input
        bn.running_mean.fill_(100.0)             # stale statistics: re-estimated before counting
    stale = bn.running_mean.clone()
    report = counter.prune()
    assert report.units_removed == 0 and model[0].out_features == 6
    assert torch.equal(bn.running_mean, stale)   # the trained statistics are put back
    first = counter.counts[-1]
    assert (first.units, first.dead, first.sites) == (6, 2, {"2": 2})
    assert (first.overlap, first.revived, first.new, first.ever_dead) == (None, 0, 2, 2)
    with torch.no_grad():
        bn.bias[0] = 1.0                          # unit 0 comes back to life
        bn.weight[2], bn.bias[2] = 0.0, -1.0      # unit 2 dies
    counter.step_count = 5
    counter.prune()
    second = counter.counts[-1]
    assert (second.step, second.dead, second.overlap, second.revived, second.new, second.ever_dead) == \
        (5, 2, 0.5, 1, 1, 3)

    _, fresh, _ = _counter()                     # resume: counts and masks come back
    fresh.load_state_dict(counter.state_dict())
    assert fresh.counts == counter.counts and torch.equal(fresh.ever_masks["2"], counter.ever_masks["2"])

