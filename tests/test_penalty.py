"""The cost-weighted penalty a DemonPruner applies (demp.core.penalty): what it reaches, its
weights, its exact gradient, weights that follow a removal, and the unit groups of ungated sites."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import demp
from demp.core.costs import site_costs
from test_costs import Plain, TokenFFN, conv_flops


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
    assert sorted(set(pruner.penalised.scale_weights.tolist())) != [1.0]
    model.zero_grad()
    pruner.penalty().backward()
    params, grads = pruner.penalised.grads(pruner.lam)
    assert {id(p) for p in params} >= {id(model.b1.weight), id(model.b2.weight)}
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g), "the closed-form gradient must equal autograd's bit for bit"
    assert model.b1.bias.grad[0] > 0 and model.b1.bias.grad[1:].eq(0).all()


def test_flops_weights_penalise_costly_sites_more():
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    _, pruner = _pruner(model, x, penalty_weights="flops")
    by_param = dict(zip((id(p) for p in pruner.penalised.scales), pruner.penalised.scale_weights.tolist()))
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
    assert any(p is model.b2.weight for p in pruner.penalised.scales)
    assert all(any(p is q for q in model.parameters()) for p in pruner.penalised.scales)


def test_norms_that_gate_nothing_are_not_penalised_and_warned_about():
    model = TokenFFN()
    x = torch.randn(8, 4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, pruner = _pruner(model, x)
    assert not any(p is model.ln.weight for p in pruner.penalised.scales)
    assert any("gate no ReLU unit" in str(w.message) and "ln" in str(w.message) for w in caught)


def test_params_weights_and_bad_settings():
    model = Plain()
    x = torch.randn(16, 3, 8, 8)
    _, pruner = _pruner(model, x, penalty_weights="params")
    by_param = dict(zip((id(p) for p in pruner.penalised.scales), pruner.penalised.scale_weights.tolist()))
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
    assert [(g.producers, g.consumers) for g in pruner.penalised.groups] == [((model.up,), (model.down,))] and not any(p is model.ln.weight for p in pruner.penalised.scales)
    y = torch.randint(0, 3, (16,))
    model.zero_grad()
    (F.cross_entropy(model(x), y) + pruner.penalty()).backward()
    params, grads = pruner.penalised.grads(pruner.lam)
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
