"""All-or-nothing removal: faults inside surgery are rolled back exactly, and retried site by site."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.core import tp_compat
from archs import ARCHS, example, plant_dead, randomise_norms


def _trained(name: str = "vgg"):
    torch.manual_seed(0)
    model = ARCHS[name]()
    randomise_norms(model)
    plant_dead(model, 0.4)
    x = example(name, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model.train()(x), torch.arange(len(x)) % 5).backward()
    opt.step()
    return model.eval(), opt, x


def _state(model: nn.Module, opt: torch.optim.Optimizer):
    """Everything a rollback must restore: tensors by value, parameters and state by identity."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [id(p) for p in model.parameters()],
            {n: (getattr(m, "in_channels", None), getattr(m, "out_channels", None),
                 getattr(m, "num_features", None)) for n, m in model.named_modules()},
            [[id(p) for p in g["params"]] for g in opt.param_groups],
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()})


def _assert_restored(model, opt, saved):
    tensors, ids, attrs, groups, state = saved
    now = _state(model, opt)
    assert now[1] == ids and now[2] == attrs and now[3] == groups
    assert tensors.keys() == now[0].keys()
    for k in tensors:
        assert torch.equal(tensors[k], now[0][k]), k
    assert state.keys() == now[4].keys()
    for pid in state:
        for k in state[pid]:
            assert torch.equal(state[pid][k], now[4][pid][k])


def test_silent_corruption_is_caught_and_rolled_back(monkeypatch):
    """A pruner that quietly changes a weight: every attempt fails verification, nothing changes."""
    model, opt, x = _trained()
    dead = demp.find_dead_units(model, [x])
    saved = _state(model, opt)
    real = tp_compat.prune_out_channels

    def corrupting(dg, module, idxs):
        real(dg, module, idxs)
        with torch.no_grad():
            model.fc[4].bias.add_(1.0)

    monkeypatch.setattr(tp_compat, "prune_out_channels", corrupting)
    report = demp.remove_units(model, dead, x[:4], optimizer=opt)
    assert report.units_removed == 0
    _assert_restored(model, opt, saved)
    reasons = [r for s in report.sites.values() for r in s.reasons]
    assert any("not be exact: output 0 changed" in r for r in reasons), reasons


def test_fault_midway_is_rolled_back_then_sites_retried(monkeypatch):
    """An IndexError in the second group leaves a half-pruned model: it is undone, then retried."""
    model, opt, x = _trained()
    dead = demp.find_dead_units(model, [x])
    with torch.no_grad():
        before = model(x)
    real, calls = tp_compat.prune_out_channels, []

    def flaky(dg, module, idxs):
        calls.append(len(idxs))
        if len(calls) == 2:
            raise IndexError("injected")
        real(dg, module, idxs)

    monkeypatch.setattr(tp_compat, "prune_out_channels", flaky)
    report = demp.remove_units(model, dead, x[:4], optimizer=opt)
    assert len(calls) > 2 and report.units_removed > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    assert {id(p) for p in opt.state} == {id(p) for p in model.parameters()}
    assert report.params_after == demp.count_params(model) < report.params_before


def test_verification_can_be_switched_off(monkeypatch):
    """verify=False trusts the surgery: the injected change stays (so the check is what catches it)."""
    model, opt, x = _trained()
    dead = demp.find_dead_units(model, [x])
    real = tp_compat.prune_out_channels

    def corrupting(dg, module, idxs):
        real(dg, module, idxs)
        with torch.no_grad():
            model.fc[4].bias.add_(1.0)

    monkeypatch.setattr(tp_compat, "prune_out_channels", corrupting)
    report = demp.remove_units(model, dead, x[:4], optimizer=opt, verify=False)
    assert report.units_removed > 0


def test_exception_outside_surgery_restores_and_propagates(monkeypatch):
    model, opt, x = _trained()
    dead = demp.find_dead_units(model, [x])
    saved = _state(model, opt)
    from demp.core import surgery
    real = surgery._prune_all

    def interrupted(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(surgery, "_prune_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demp.remove_units(model, dead, x[:4], optimizer=opt)
    _assert_restored(model, opt, saved)
