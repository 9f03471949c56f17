"""Unit costs and gating norms (demp.core.costs) on hand-computed networks, and the cost-weighted
penalty in DemonPruner: its exact gradient, and weights that follow a removal."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.core.costs import site_costs, unit_weights


class Plain(nn.Module):
    """conv(3->4) bn relu | conv(4->6) bn relu | flatten | linear(6*8*8 -> 5), 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """stem (site) -> conv bn relu conv bn (+ stem) relu -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.relu(self.b0(self.c0(x)))
        out = F.relu(self.b1(self.c1(x)))
        out = F.relu(self.b2(self.c2(out)) + x)
        return self.fc(out.mean((2, 3)))


class Concat(nn.Module):
    """Two branches (3 and 5 channels) concatenated into a 1x1 conv (8 -> 2), then linear."""

    def __init__(self):
        super().__init__()
        self.ca, self.ba = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.cb, self.bb = nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5)
        self.cc = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        x = torch.cat([F.relu(self.ba(self.ca(x))), F.relu(self.bb(self.cb(x)))], 1)
        return self.fc(self.cc(x).mean((2, 3)))


class TokenFFN(nn.Module):
    """Pre-LayerNorm FFN on (B, T, C): no norm gates the hidden ReLU units."""

    def __init__(self, dim=8, hidden=16):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = x + self.down(F.relu(self.up(self.ln(x))))
        return self.head(x.mean(1))


def conv_flops(cin, cout, k, hw):
    return 2 * cin * cout * k * k * hw


def test_plain_cnn_costs_by_hand():
    model = Plain().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    first, second = costs["/relu#0"], costs["/relu#1"]
    # one unit of the first site: its row of c1, plus its input columns of c2
    assert first.flops == conv_flops(3, 4, 3, 64) / 4 + conv_flops(4, 6, 3, 64) / 4
    assert first.params == 3 * 9 + 2 + 6 * 9                      # c1 row, bn scale+shift, c2 column
    # the second site feeds the linear layer through a flatten: 64 inputs per channel
    assert second.flops == conv_flops(4, 6, 3, 64) / 6 + 2 * 64 * 5
    assert second.params == 4 * 9 + 2 + 64 * 5
    assert first.norms == (model.b1,) and second.norms == (model.b2,)
    assert (first.width, second.width) == (4, 6)


def test_residual_gating_goes_through_the_addition_but_not_into_another_site():
    model = Residual().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    stem, inner, out = (costs[n] for n in ("/relu#0", "/relu#1", "/relu#2"))
    assert stem.norms == (model.b0,) and inner.norms == (model.b1,)
    assert out.norms == (model.b2,)          # b2 through the addition; b0 sits behind the stem's site
    # the identity skip ties an output channel to the same stem channel: removing one means
    # removing the other, so a unit costs the whole coupled group (c0 row, c1 column, c2 row, fc column)
    group = conv_flops(3, 4, 3, 64) / 4 + conv_flops(4, 4, 3, 64) / 4 * 2 + 2 * 5
    assert out.flops == stem.flops == group


def test_concat_costs_follow_each_branch():
    model = Concat().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    a, b = costs["/relu#0"], costs["/relu#1"]
    per_input = conv_flops(8, 2, 1, 64) / 8
    assert a.flops == conv_flops(3, 3, 3, 64) / 3 + per_input
    assert b.flops == conv_flops(3, 5, 1, 64) / 5 + per_input
    assert a.norms == (model.ba,) and b.norms == (model.bb,)


def test_token_ffn_has_no_gating_norm():
    model = TokenFFN().eval()
    costs = site_costs(model, torch.randn(2, 4, 8))
    (site,) = costs.values()
    assert site.norms == () and site.width == 16
    assert site.flops == 2 * 8 * 4 + 2 * 8 * 4       # per call of a (1, 4 tokens) input: row of up, column of down


def test_unit_weights_mean_one_and_power():
    model = Plain().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    for power in (1.0, 0.5):
        w = unit_weights(costs, "flops", power)
        units = sum(c.width for c in costs.values())
        assert sum(w[n] * c.width for n, c in costs.items()) / units == pytest.approx(1.0)
        ratio = (costs["/relu#0"].flops / costs["/relu#1"].flops) ** power
        assert w["/relu#0"] / w["/relu#1"] == pytest.approx(ratio)
    assert set(unit_weights(costs, "flops", 0.0).values()) == {1.0}
    assert set(unit_weights(costs, "uniform", 1.0).values()) == {1.0}
    with pytest.raises(ValueError, match="unknown cost measure"):
        unit_weights(costs, "latency", 1.0)


def _pruner(model, x, **options):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return opt, demp.DemonPruner(model, opt, x[:2], total_steps=100, probe=[x], reg_peak=0.1,
                                 schedule="constant", prune_every=1000, **options)


@pytest.mark.parametrize("form", ["l1", "l2", "l1_pos"])
def test_weighted_penalty_gradient_is_exact(form):
    torch.manual_seed(0)
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        model.b1.weight[0] = 1e-4       # a silenced unit for the shift push
        model.b1.bias[0] = 0.3
    opt, pruner = _pruner(model, x, penalty_weights="flops", reg_form=form)
    assert sorted(set(pruner._reg_weights.tolist())) != [1.0]
    model.zero_grad()
    pruner.penalty().backward()
    params, grads = pruner._penalty_grads(pruner.lam)
    assert {id(p) for p in params} >= {id(model.b1.weight), id(model.b2.weight)}
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g), "the closed-form gradient must equal autograd's bit for bit"
    assert model.b1.bias.grad[0] > 0 and model.b1.bias.grad[1:].eq(0).all()


def test_flops_weights_penalise_costly_sites_more():
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    _, pruner = _pruner(model, x, penalty_weights="flops")
    by_param = dict(zip((id(p) for p in pruner._reg_params), pruner._reg_weights.tolist()))
    costs = site_costs(model, x[:2])
    assert by_param[id(model.b1.weight)] / by_param[id(model.b2.weight)] == pytest.approx(
        costs["/relu#0"].flops / costs["/relu#1"].flops)


def test_weights_follow_a_removal():
    torch.manual_seed(0)
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():      # kill three units of the second site: scale 0, negative shift
        model.b2.weight[:3] = 0.0
        model.b2.bias[:3] = -1.0
    opt, pruner = _pruner(model, x, penalty_weights="flops", recalibrate=False)
    before = pruner.costs["/relu#1"].flops
    first_before = pruner.costs["/relu#0"].flops
    report = pruner.prune()
    assert report.units_removed == 3 and model.c2.out_channels == 3
    # a unit of the first site now feeds 3 output channels of c2, not 6
    assert pruner.costs["/relu#0"].flops == conv_flops(3, 4, 3, 64) / 4 + conv_flops(4, 3, 3, 64) / 4
    assert pruner.costs["/relu#0"].flops < first_before and pruner.costs["/relu#1"].flops == before
    assert any(p is model.b2.weight for p in pruner._reg_params)
    assert all(any(p is q for q in model.parameters()) for p in pruner._reg_params)


def test_norms_that_gate_nothing_are_not_penalised_and_warned_about():
    model = TokenFFN()
    x = torch.randn(8, 4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, pruner = _pruner(model, x)
    assert not any(p is model.ln.weight for p in pruner._reg_params)
    assert any("gate no ReLU unit" in str(w.message) and "ln" in str(w.message) for w in caught)


def test_params_weights_and_bad_settings():
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    _, pruner = _pruner(model, x, penalty_weights="params")
    by_param = dict(zip((id(p) for p in pruner._reg_params), pruner._reg_weights.tolist()))
    assert by_param[id(model.b2.weight)] > by_param[id(model.b1.weight)]    # 358 vs 83 parameters
    with pytest.raises(demp.DempError, match="penalty_weights"):
        _pruner(Plain(), x, penalty_weights="latency")
    with pytest.raises(demp.DempError, match="reg_target 'gates'"):
        _pruner(Plain(), x, penalty_weights="flops", reg_target="all_weights")
    with pytest.raises(demp.DempError, match="cost_power"):
        _pruner(Plain(), x, cost_power=-1.0)


def test_an_ungated_ffn_gets_a_group_l1_on_its_producer_rows_with_exact_gradients():
    """No norm gates the FFN's hidden units: the penalty reaches the rows (weights and bias) of
    the layer producing them, the LayerNorm is left alone, and the gradient the pruner computes
    equals what the loss's backward adds, so a dead row stays out of the live-only noise."""
    from demp.core.noise import live_mask
    torch.manual_seed(0)
    model = TokenFFN()
    x = torch.randn(16, 4, 8)
    with torch.no_grad():            # hidden unit 0 dead (row zero, bias negative); unit 1 silenced
        model.up.weight[0] = 0.0
        model.up.bias[0] = -1.0
        model.up.weight[1] = 1e-4
        model.up.bias[1] = 0.5
    opt, pruner = _pruner(model, x)
    assert [(g.producers, g.consumers) for g in pruner._groups] == [((model.up,), (model.down,))] and not any(p is model.ln.weight for p in pruner._reg_params)
    y = torch.randint(0, 3, (16,))
    model.zero_grad()
    (F.cross_entropy(model(x), y) + pruner.penalty()).backward()
    params, grads = pruner._penalty_grads(pruner.lam)
    pen = {id(p): g for p, g in zip(params, grads)}
    w, b = model.up.weight, model.up.bias
    assert not live_mask(w, pen[id(w)])[0].any() and not live_mask(b, pen[id(b)])[0]
    assert live_mask(w, pen[id(w)])[2:].any()
    assert pen[id(b)][1] > pen[id(b)][2]              # the silenced row's bias is pushed down harder
    assert torch.isfinite(pen[id(w)]).all()           # finite at the all-zero row


def test_demp_kills_and_removes_ffn_units_exactly():
    """A token FFN trained with DemP (no norm to shrink): units die through their rows and go;
    every removal is verified exact inside remove_units, and the pruned model still fits."""
    torch.manual_seed(0)
    model = TokenFFN(dim=8, hidden=32)
    x = torch.randn(256, 4, 8)
    y = (x.mean(1) @ torch.randn(8, 3)).argmax(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = demp.DemonPruner(model, opt, x[:2], total_steps=300, probe=[x], reg_peak=0.05,
                              schedule="constant", prune_every=50)
    for step in range(300):
        idx = torch.randint(0, 256, (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx]) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    assert model.up.out_features < 32 and model.down.in_features == model.up.out_features
    assert (model(x).argmax(1) == y).float().mean() > 0.8
