"""Noise reaches live units only, is reproducible, and stays out of the optimizer."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from demp import DempError

from demp.core import regulariser
from demp.core.noise import NoiseInjector


def _net_with_dead_unit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight[1] = 0.5
        net[1].bias[1] = -10.0   # unit 1 is dead on every batch
    return net


def _backward_with_penalty(net, lam):
    x = torch.randn(16, 3)
    scales = regulariser.norm_scale_params(net)
    loss = F.cross_entropy(net(x), torch.zeros(16, dtype=torch.long))
    (loss + lam * regulariser.penalty(scales, "l1")).backward()
    return dict(zip(scales, regulariser.penalty_grad(scales, "l1", lam)))


@pytest.mark.parametrize("mode", ["live", "dead", "all"])
def test_noise_mask_modes(mode):
    net = _net_with_dead_unit()
    pen = _backward_with_penalty(net, 0.1)
    gamma = net[1].weight
    assert gamma.grad[1] != 0  # the penalty alone gives the dead unit's gamma a gradient
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    NoiseInjector(mode, seed=1).apply(list(net.parameters()), 1.0, pen)
    moved = {n: p.detach() != before[n] for n, p in net.named_parameters()}
    dead_rows = [moved["0.weight"][1].any(), moved["0.bias"][1], moved["1.weight"][1], moved["1.bias"][1],
                 moved["3.weight"][:, 1].any()]
    live_rows = moved["0.weight"][0].all() and moved["1.weight"][0] and moved["3.weight"][:, 0].all()
    if mode == "live":
        assert not any(dead_rows) and live_rows
    elif mode == "dead":
        assert all(dead_rows) and not moved["1.weight"][0] and not moved["0.weight"][0].any()
    else:
        assert all(m.all() for m in moved.values())


def test_noise_is_reproducible_resumable_and_outside_the_optimizer():
    def run(seed, resume_state=None):
        net = _net_with_dead_unit()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        pen = _backward_with_penalty(net, 0.1)
        opt.step()
        state = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in opt.state.items()}
        inj = NoiseInjector("live", seed=seed)
        if resume_state is not None:
            inj.load_state_dict(resume_state)
        inj.apply(list(net.parameters()), 0.01, pen)
        for p, s in opt.state.items():
            assert all(torch.equal(s[k], state[p][k]) for k in s)
        return [p.detach().clone() for p in net.parameters()], inj.state_dict()

    a, _ = run(3)
    b, _ = run(3)
    c, _ = run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    d, _ = run(99, resume_state=NoiseInjector("live", seed=3).state_dict())  # state wins over seed
    assert all(torch.equal(x, y) for x, y in zip(a, d))


def test_frozen_and_zero_sigma_untouched():
    net = _net_with_dead_unit()
    _backward_with_penalty(net, 0.0)
    net[0].weight.requires_grad_(False)
    w = net[0].weight.detach().clone()
    others = [p.detach().clone() for p in net.parameters()]
    inj = NoiseInjector("all", seed=0)
    inj.apply(list(net.parameters()), 0.0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), others))
    inj.apply(list(net.parameters()), 1.0)
    assert torch.equal(net[0].weight, w)


def test_bad_mode():
    with pytest.raises(DempError, match="unknown noise mode 'some'.*live, all, dead"):
        NoiseInjector("some")
