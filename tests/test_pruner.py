"""DemonPruner end to end on real data (scikit-learn digits), resume, and bad input."""
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp import DempError

sklearn = pytest.importorskip("sklearn.datasets")

STEPS, BATCH = 240, 64


@pytest.fixture(scope="module")
def digits():
    d = sklearn.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 10))


def make_run(xtr, model=None):
    model = model or make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    pruner = demp.DemonPruner(model, opt, xtr[:2], total_steps=STEPS, probe=[xtr[:512]],
                              reg_peak=0.02, noise_peak=5e-5, prune_every=40, seed=7)
    return model, opt, pruner


def train(model, opt, pruner, xtr, ytr, start, stop):
    model.train()
    for step in range(start, stop):
        i = (step * BATCH) % (len(xtr) - BATCH)
        x, y = xtr[i:i + BATCH], ytr[i:i + BATCH]
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(loss)


def test_units_shrink_accuracy_holds(digits):
    xtr, ytr, xte, yte = digits
    model, opt, pruner = make_run(xtr)
    units0 = sum(s.width for s in demp.list_sites(model, xtr[:2]))
    params0 = demp.count_params(model)
    train(model, opt, pruner, xtr, ytr, 0, STEPS)
    assert model.training  # removal events left the training mode alone
    report = pruner.finish()
    units = sum(s.width for s in demp.list_sites(model, xtr[:2]))
    assert units < units0 * 0.95 and demp.count_params(model) < params0 * 0.9
    assert pruner.history[-1].units_after == units == report.units_after
    assert sum(pruner.live_units.values()) <= units
    model.eval()
    with torch.no_grad():
        out = model(xte)
    assert torch.isfinite(out).all()
    assert (out.argmax(1) == yte).float().mean() > 0.9
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    steps = [e.step for e in pruner.history]
    assert steps[:3] == [0, 40, 80] and steps[-1] == STEPS


def test_resume_reproduces_the_uninterrupted_run(digits):
    xtr, ytr, _, _ = digits
    model, opt, pruner = make_run(xtr)
    train(model, opt, pruner, xtr, ytr, 0, STEPS)
    reference = [p.detach().clone() for p in model.parameters()]

    model, opt, pruner = make_run(xtr)
    half = STEPS // 2 + 3  # past several removal events
    train(model, opt, pruner, xtr, ytr, 0, half)
    buf = io.BytesIO()
    torch.save({"model": model, "opt": opt.state_dict(), "pruner": pruner.state_dict(),
                "rng": torch.get_rng_state()}, buf)
    del model, opt, pruner
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model, opt, pruner = make_run(xtr, model=ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    pruner.load_state_dict(ckpt["pruner"])
    torch.set_rng_state(ckpt["rng"])
    train(model, opt, pruner, xtr, ytr, half, STEPS)
    resumed = list(model.parameters())
    assert len(resumed) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(resumed, reference))


def test_schedule_values_and_state(digits):
    xtr, _, _, _ = digits
    model, opt, pruner = make_run(xtr)
    assert math.isclose(pruner.lam, 0.02 / 25)
    assert math.isclose(pruner.sigma, 5e-5 / 25)
    pruner.step_count = int(0.3 * STEPS)
    assert math.isclose(pruner.lam, 0.02, rel_tol=1e-9)
    assert pruner.penalty().item() > 0
    model2, opt2, pruner2 = make_run(xtr)
    with pytest.raises(DempError, match="settings differ.*reg_peak"):
        other = demp.DemonPruner(model2, opt2, xtr[:2], total_steps=STEPS, probe=[xtr[:8]],
                                 reg_peak=0.5)
        other.load_state_dict(pruner.state_dict())


def test_noise_every_k_applies_scaled_noise_on_multiples(digits):
    xtr, ytr, _, _ = digits
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = demp.DemonPruner(model, opt, xtr[:2], total_steps=100, probe=[xtr[:64]],
                              reg_peak=0.0, noise_peak=1e-2, prune_every=1000, noise_every=4,
                              noise_mode="all", schedule="constant")
    w = model[0].weight
    for step in range(5):
        before = w.detach().clone()
        opt.zero_grad()
        F.cross_entropy(model(xtr[:16]), ytr[:16]).backward()
        opt.step()
        pruner.step()
        delta = w.detach() - before
        if step % 4:
            assert torch.equal(delta, torch.zeros_like(delta))
        else:
            assert abs(delta.std().item() - 1e-2 * 2) < 4e-3  # sigma * sqrt(k)


def test_nan_loss_and_bad_settings(digits):
    xtr, _, _, _ = digits
    model, opt, pruner = make_run(xtr)
    snapshot = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DempError, match="loss is nan at step 0"):
        pruner.step(torch.tensor(float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshot))
    bad = [({"prune_every": 0}, "prune_every must be >= 1"),
           ({"reg_peak": -1.0}, "reg_peak must be >= 0"),
           ({"schedule": "wavy"}, "wavy"),
           ({"noise_mode": "some"}, "unknown noise_mode 'some'"),
           ({"reg_form": "l3"}, "unknown reg_form 'l3'"),
           ({"bogus": 1}, r"unknown DemonPruner option\(s\) \['bogus'\]")]
    for kwargs, match in bad:
        args = dict(total_steps=10, probe=[xtr[:8]]) | kwargs
        with pytest.raises((DempError, ValueError), match=match):
            demp.DemonPruner(model, opt, xtr[:2], **args)
    with pytest.raises(DempError, match="re-iterable"):
        demp.DemonPruner(model, opt, xtr[:2], total_steps=10, probe=iter([xtr[:8]]))


def test_noise_every_four_keeps_the_result(digits):
    """Noise every 4 steps with sigma*2 (same random-walk variance) removes as much, as well."""
    xtr, ytr, xte, yte = digits
    results = []
    for k in (1, 4):
        model = make_net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
        pruner = demp.DemonPruner(model, opt, xtr[:2], total_steps=STEPS, probe=[xtr[:512]],
                                  reg_peak=0.02, noise_peak=5e-3, prune_every=40, noise_every=k)
        train(model, opt, pruner, xtr, ytr, 0, STEPS)
        pruner.finish()
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        results.append((pruner.history[-1].units_after, acc))
    (u1, a1), (u4, a4) = results
    assert abs(u1 - u4) <= 0.1 * u1 and a1 > 0.9 and a4 > 0.9 and abs(a1 - a4) < 0.03


def test_round_to_keeps_widths_multiples_and_the_rest_dead_but_inert(digits):
    """round_to=8: each site keeps a multiple of 8 units; the dead units beyond stay, still dead."""
    xtr, _, _, _ = digits
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():                       # plant 21 dead units in the first conv (32 -> 11 live)
        model[1].weight[:21] = 0.0
        model[1].bias[:21] = -1.0
    pruner = demp.DemonPruner(model, opt, xtr[:2], total_steps=10, probe=[xtr[:256]], round_to=8)
    before = model.eval()(xtr[:64]).detach()
    pruner.prune()
    assert model[0].out_channels == 16 and pruner.dead_kept == {"2": 5}
    assert torch.allclose(model.eval()(xtr[:64]), before, atol=1e-5)
    with pytest.raises(DempError, match="round_to must be >= 1"):
        demp.DemonPruner(make_net(), opt, xtr[:2], total_steps=10, probe=[xtr[:256]], round_to=0)
