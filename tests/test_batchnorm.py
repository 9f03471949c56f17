"""BatchNorm re-estimation before dead checks: stale statistics must not fake deaths."""
import torch
import torch.nn as nn

import demp
from demp.core.batchnorm import recalibrated, reestimate


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_stale_statistics_fake_deaths_that_reestimation_removes():
    """Unit 0's running mean lags far above its real mean: with the stale value every input
    looks dead; with statistics re-estimated on the data the unit is alive and stays."""
    model = net()
    x = torch.randn(256, 4)
    reestimate(model, [x[:128], x[128:]])
    bn = model[1]
    assert not any(bool(m.any()) for m in demp.find_dead_units(model, [x]).values())
    with torch.no_grad():
        bn.running_mean[0] += 50 * bn.running_var[0].sqrt()   # as if the scale shrank since
    stale = demp.find_dead_units(model, [x])
    site = next(iter(stale))
    assert bool(stale[site][0])
    with recalibrated(model, [x[:128], x[128:]]) as used:
        fresh = demp.find_dead_units(model, [x])
    assert used == 2 and not bool(fresh[site][0])
    assert bn.running_mean[0] > 10  # the trained (stale) statistics are back after the block


def test_a_truly_dead_unit_is_still_found():
    model = net()
    x = torch.randn(256, 4)
    with torch.no_grad():
        model[1].weight[2] = 0.0
        model[1].bias[2] = -1.0          # relu(0 * xhat - 1) = 0 on every input
    with recalibrated(model, [x]):
        dead = demp.find_dead_units(model, [x])
    site = next(iter(dead))
    assert dead[site].nonzero().flatten().tolist() == [2]


def test_reestimation_restores_modes_momentum_and_counters():
    model = net()
    model.train()
    model[0].eval()                      # a mixed mode survives
    bn = model[1]
    bn.momentum = 0.3
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with recalibrated(model, [torch.randn(64, 4) + 3]):
        assert not torch.allclose(bn.running_mean, before["running_mean"])
        assert bn.momentum == 0.3
    after = bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model[0].training and bn.momentum == 0.3


def test_pruner_keeps_units_that_only_stale_statistics_kill():
    """The same model and data: with re-estimation off the stale unit is removed, with it on kept."""
    x = torch.randn(256, 4)
    results = {}
    for recalibrate in (False, True):
        model = net()
        reestimate(model, [x])
        with torch.no_grad():
            model[1].running_mean[0] += 50 * model[1].running_var[0].sqrt()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        pruner = demp.DemonPruner(model, opt, x[:2], total_steps=10, probe=[x], recalibrate=recalibrate,
                                  reg_peak=0.0, noise_peak=0.0)
        report = pruner.prune()
        results[recalibrate] = report.units_removed
    assert results == {False: 1, True: 0}
