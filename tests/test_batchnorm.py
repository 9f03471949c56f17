"""BatchNorm re-estimation before dead checks: stale statistics must not fake deaths."""
import pytest
import torch
import torch.nn as nn

import demp
from demp.core.batchnorm import recalibrated, recalibrate_bn


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_stale_statistics_fake_deaths_that_reestimation_removes():
    """Unit 0's running mean lags far above its real mean: with the stale value every input
    looks dead; with statistics re-estimated on the data the unit is alive and stays."""
    model = net()
    x = torch.randn(256, 4)
    recalibrate_bn(model, [x[:128], x[128:]])
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
        recalibrate_bn(model, [x])
        with torch.no_grad():
            model[1].running_mean[0] += 50 * model[1].running_var[0].sqrt()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        pruner = demp.DemonPruner(model, opt, x[:2], total_steps=10, probe=[x], recalibrate=recalibrate,
                                  reg_peak=0.0, noise_peak=0.0)
        report = pruner.prune()
        results[recalibrate] = report.units_removed
    assert results == {False: 1, True: 0}


def _fitted_net():
    """A small conv net trained a little on a learnable toy task (labels from a fixed linear map)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(256, 3, 8, 8)
    y = (x.mean((2, 3)) @ torch.randn(3, 3)).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x, y


@pytest.mark.parametrize("labelled", [True, False])
def test_choose_statistics_replaces_stale_statistics(labelled):
    """Running statistics that lag the weights (here: shifted) are replaced by re-estimated ones;
    good ones are kept.  Criterion: the probe loss with targets, else KL to batch statistics."""
    from demp.core.batchnorm import choose_statistics
    net, x, y = _fitted_net()
    probe = [(x[:128], y[:128])] if labelled else [x[:128]]
    calibration = [x[128:]]
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.add_(3.0)
        bn.running_var.mul_(20.0)
    stale = bn.running_mean.clone()
    choice = choose_statistics(net, probe, calibration)
    assert choice.kept == "re-estimated" and choice.reestimated < choice.trained
    assert choice.criterion == ("loss" if labelled else "kl_to_batch_stats")
    assert not torch.allclose(bn.running_mean, stale) and net.training
    good = bn.running_mean.clone()
    again = choose_statistics(net, probe, [x[128:129]])        # a worse re-estimate (one image)
    assert again.kept == "trained" and torch.equal(bn.running_mean, good)


def test_choose_statistics_without_batchnorm():
    from demp.core.batchnorm import choose_statistics
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert choose_statistics(net, [torch.randn(8, 4)], [torch.randn(8, 4)]).kept == "none"
