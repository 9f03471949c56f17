"""Unstructured sparsity next to unit removal (demp.core.sparsity): masks that hold through
training, RigL's exact densities and growth, GMP's schedule, masks sliced with removed units,
resumption, counts, and refusals."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp import DempError
from demp.core.sparsity import SparseConfig, Sparsifier, erk_densities, nonzero_params, sparse_flops


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc1, self.bf = nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.bf(self.fc1(x.flatten(1)))))


def data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def train(model, opt, sparsifier, x, y, steps, pruner=None):
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y) + (pruner.penalty() if pruner else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner:
            pruner.step(loss)
        sparsifier.step()


def masked_zero(model, sparsifier):
    return all(bool((m.weight[~sparsifier.masks[m.weight]] == 0).all()) for m in sparsifier.layers.values())


@pytest.mark.parametrize("method", ["rigl", "gmp"])
@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_masked_weights_stay_exactly_zero(method, optim):
    torch.manual_seed(0)
    model = Net()
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2) if optim == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    x, y = data()
    sp = Sparsifier(model, opt, x[:2], total_steps=50, method=method, density=0.3, every=5, start=0.1, end=0.6)
    assert "c1" not in sp.layers and set(sp.layers) == {"c2", "fc1", "fc2"}     # the first layer stays dense
    for _ in range(50):
        train(model, opt, sp, x, y, 1)
        assert masked_zero(model, sp)
        for m in sp.layers.values():
            for value in opt.state[m.weight].values():
                if torch.is_tensor(value) and value.shape == m.weight.shape:
                    assert (value[~sp.masks[m.weight]] == 0).all()
    overall = sum(int(sp.masks[m.weight].sum()) for m in sp.layers.values()) / sum(m.weight.numel() for m in sp.layers.values())
    assert overall == pytest.approx(0.3, abs=0.01)


def test_rigl_keeps_each_layer_at_its_density_after_every_update():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = data()
    sp = Sparsifier(model, opt, x[:2], total_steps=40, method="rigl", density=0.2, every=4)
    before = {n: sp.masks[m.weight].clone() for n, m in sp.layers.items()}
    for step in range(40):
        train(model, opt, sp, x, y, 1)
        for n, m in sp.layers.items():
            assert int(sp.masks[m.weight].sum()) == max(1, round(sp.densities[n] * m.weight.numel()))
    assert any(not torch.equal(before[n], sp.masks[m.weight]) for n, m in sp.layers.items())   # masks moved


def test_rigl_grows_where_the_dense_gradient_is_largest():
    """A hand-made layer: 4 of 8 weights active; the two smallest are dropped and the two inactive
    entries with the largest gradient are grown, at zero."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = Sparsifier(model, opt, torch.randn(2, 2), total_steps=100, method="rigl", density=0.5, every=1,
                    drop_fraction=0.5, end=1.0)
    w = model[2].weight
    with torch.no_grad():
        w.copy_(torch.tensor([[5.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 2.0]]))
    sp.masks[w] = torch.tensor([[True, False], [False, True], [True, False], [False, True]])
    w.grad = torch.tensor([[0.0, 9.0], [3.0, 0.0], [0.0, 1.0], [8.0, 0.0]])
    sp._drop_and_grow(0.5)
    assert sp.masks[w].tolist() == [[True, True], [False, False], [True, False], [True, False]]
    assert w[0, 1] == 0 and w[3, 0] == 0 and w[0, 0] == 5.0


def test_gmp_density_falls_on_the_cubic_schedule():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data()
    sp = Sparsifier(model, opt, x[:2], total_steps=100, method="gmp", density=0.1, every=10,
                    distribution="uniform", start=0.2, end=0.6)
    seen = {}
    for step in range(100):
        train(model, opt, sp, x, y, 1)
        seen[step] = sp.density_of("fc1")
    assert seen[15] == 1.0 and seen[95] == pytest.approx(0.1, abs=0.002)
    mid = 0.1 + 0.9 * (1 - 0.5) ** 3                        # at step 40, half way from 20 to 60
    assert seen[40] == pytest.approx(mid, abs=0.002)


def test_erk_densities():
    shapes = {"a": (16, 3, 3, 3), "b": (64, 16, 3, 3), "c": (10, 64)}
    d = erk_densities(shapes, 0.2)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(d[n] * sizes[n] for n in shapes) / sum(sizes.values()) == pytest.approx(0.2)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    assert d["a"] / d["b"] == pytest.approx(raw["a"] / raw["b"]) and d["b"] < d["a"] < 1 == d["c"]   # c capped
    high = erk_densities(shapes, 0.6)                     # the small layers would pass 1: capped dense
    assert high["c"] == 1.0 and all(v <= 1 for v in high.values())
    assert sum(high[n] * sizes[n] for n in shapes) / sum(sizes.values()) == pytest.approx(0.6)
    assert set(erk_densities(shapes, 0.2, "uniform").values()) == {0.2}


def test_removal_slices_masks_with_weights_and_optimizer_state():
    """Units removed with masks present: masks, weights and optimizer state sliced together, and
    the pruned model computes what the masked original did."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = data()
    sp = Sparsifier(model, opt, x[:2], total_steps=20, method="rigl", density=0.4, every=5)
    train(model, opt, sp, x, y, 3)
    with torch.no_grad():                     # kill 5 units of the second conv
        model.b2.weight[:5] = 0.0
        model.b2.bias[:5] = -1.0
    model.eval()
    with torch.no_grad():
        before = model(x)
    fc1_mask = sp.masks[model.fc1.weight].clone()
    dead = demp.find_dead_units(model, [x])
    report = demp.remove_units(model, dead, x[:2], opt, follow=[sp.masks])
    assert report.units_removed == sum(int(m.sum()) for m in dead.values()) and model.c2.out_channels == 11
    for m in sp.layers.values():
        assert sp.masks[m.weight].shape == m.weight.shape
        assert opt.state[m.weight]["exp_avg"].shape == m.weight.shape
    rows = (~dead["/relu#2"]).nonzero().flatten()                     # fc1's own units that stayed
    cols = torch.cat([torch.arange(c * 16, c * 16 + 16) for c in (~dead["/relu#1"]).nonzero().flatten().tolist()])
    assert torch.equal(sp.masks[model.fc1.weight], fc1_mask[rows][:, cols])    # rows and columns went
    assert masked_zero(model, sp)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    model.train()
    train(model, opt, sp, x, y, 3)                    # through the RigL update at step 5
    assert masked_zero(model, sp)
    for n, m in sp.layers.items():                    # the target follows the layer's new size
        assert int(sp.masks[m.weight].sum()) == max(1, round(sp.densities[n] * m.weight.numel()))


def test_a_refused_removal_leaves_the_masks_as_they_were():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = data()
    sp = Sparsifier(model, opt, x[:2], total_steps=20, density=0.4)
    masks = {n: sp.masks[m.weight].clone() for n, m in sp.layers.items()}
    with pytest.raises(DempError):
        demp.remove_units(model, {"nope": torch.ones(3, dtype=torch.bool)}, x[:2], opt, follow=[sp.masks])
    assert all(torch.equal(masks[n], sp.masks[m.weight]) for n, m in sp.layers.items())


def test_resume_is_bit_identical():
    torch.manual_seed(0)
    x, y = data()

    def build():
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, Sparsifier(model, opt, x[:2], total_steps=30, method="rigl", density=0.3, every=3)
    model, opt, sp = build()
    train(model, opt, sp, x, y, 30)
    half_model, half_opt, half_sp = build()
    train(half_model, half_opt, half_sp, x, y, 12)
    saved = ({k: v.clone() for k, v in half_model.state_dict().items()}, half_opt.state_dict(), half_sp.state_dict())
    model2, opt2, sp2 = build()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sp2.load_state_dict(saved[2])
    train(model2, opt2, sp2, x, y, 18)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert all(torch.equal(sp.masks[m.weight], sp2.masks[m2.weight])
               for m, m2 in zip(sp.layers.values(), sp2.layers.values()))


def test_counts_and_bad_input():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, _ = data()
    with torch.no_grad():
        for bn in (model.b1, model.b2, model.bf):
            bn.bias.fill_(0.1)                     # no parameter zero by chance
    dense_flops = demp.core.flops.forward_flops(model, x[:1])
    sp = Sparsifier(model, opt, x[:2], total_steps=10, method="rigl", density=0.25, distribution="uniform")
    zeros = sum(int((~sp.masks[m.weight]).sum()) for m in sp.layers.values())
    assert nonzero_params(model) == demp.count_params(model) - zeros
    saved = sum(f * (1 - sp.density_of(n)) for n, f in
                [("c2", 2 * 8 * 16 * 9 * 64), ("fc1", 2 * 256 * 32), ("fc2", 2 * 32 * 4)])
    assert sparse_flops(model, x[:1]) == pytest.approx(dense_flops - saved, abs=2)
    state = {k: v.clone() for k, v in Net().state_dict().items()}
    for bad, match in [({"density": 0.0}, "density"), ({"density": 1.5}, "density"),
                       ({"method": "snip"}, "unknown sparse method"), ({"start": 0.9, "end": 0.5}, "start and end")]:
        fresh = Net()
        fresh.load_state_dict(state)
        with pytest.raises(DempError, match=match):
            Sparsifier(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), x[:2], total_steps=10, **bad)
        assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())      # nothing changed
    with pytest.raises(DempError, match="no Conv or Linear layer"):
        mlp = nn.Sequential(nn.Linear(4, 2))
        Sparsifier(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), torch.randn(2, 4), total_steps=10)
