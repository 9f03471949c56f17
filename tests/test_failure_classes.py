"""Users' own architectures: every removal is exact or refused with a short reason.

One case per failure class found on user-style models (tests/user_archs.py).  Each checks
the contract (same outputs, train-mode forward runs, optimizer holds exactly the model's
parameters) and what should have happened: units removed where the shape is supported,
a refusal naming the cause where it is not.
"""
import pytest
import torch

import demp
from demp import DempError
from demp.core.detection import call_model
from user_archs import CASES, BatchNormAct2d, two_inputs

REMOVED = {"1_conv1d_dropout": 2, "1_channels_last": 3, "2_siamese": 2, "3_time_concat": 2,
           "6_frozen_conv": 2, "9_two_inputs": 3, "10_fused": 6, "15_groupnorm_cat_whole": 8,
           "12_token_ffn": 3}
"""Cases fixed properly: exactly these many units go."""
REFUSED = {"4_channel_mean": "not be exact", "5_with_features": "output 1 changed shape",
           "6_buffer_norm": "not be exact", "11_post_norm": "a norm layer after the ReLU",
           "7_tied": "tied parameters",
           "11_channel_scale": "unsupported operation 'sum'",
           "14_one_per_group": "one output per group", "15_groupnorm_cat": "whole GroupNorm groups",
           "17_input_residual": "not be exact"}
"""Cases refused: no unit goes, and the reason says why."""


def _flat(out):
    return [t for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("name", sorted(set(CASES) - {"8_weight_norm"}))
def test_removal_is_exact_or_refused(name):
    torch.manual_seed(0)
    model, x = CASES[name]()
    model.eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    with torch.no_grad():
        before = _flat(call_model(model, x))
    dead = demp.find_dead_units(model, [(x,)])
    report = demp.remove_units(model, dead, x, optimizer=opt)
    with torch.no_grad():
        after = _flat(call_model(model, x))
        call_model(model.train(), x)
    assert [t.shape for t in after] == [t.shape for t in before]
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    reasons = " | ".join(r for s in report.sites.values() for r in s.reasons)
    assert "tensor(" not in reasons and "_ElementWiseOp" not in reasons and len(reasons) < 400
    if name in REMOVED:
        assert report.units_removed == REMOVED[name], report.sites
    if name in REFUSED:
        assert report.units_removed == 0 and REFUSED[name] in reasons, reasons


def test_unit_dimension_comes_from_the_producing_layer():
    model, x = CASES["1_conv1d_dropout"]()
    assert [(s.width, s.channel_dim) for s in demp.list_sites(model, x)] == [(6, 1)]
    model, x = CASES["1_channels_last"]()
    assert [(s.width, s.channel_dim) for s in demp.list_sites(model, x)] == [(9, 3)]


def test_shared_encoder_unit_live_on_one_call_stays():
    model, x = CASES["2_siamese"]()
    dead = demp.find_dead_units(model, [(x,)])
    assert dead["/relu#1"][2] and not dead["/relu#0"][2]   # unit 2: dead on the second call only
    demp.remove_units(model, dead, x)
    assert model.enc.out_features == 5                      # only unit 4, dead on both calls, went


def test_frozen_layers_are_sliced_and_stay_frozen():
    model, x = CASES["6_frozen_conv"]()
    demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert model.conv.weight.shape[0] == model.bn.num_features == 4
    assert not model.conv.weight.requires_grad and model.bn.weight.requires_grad


def test_tied_weights_stay_tied():
    model, x = CASES["7_tied"]()
    demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert model.c1.weight is model.c2.weight


def test_parametrized_layers_are_refused_before_anything_changes():
    model, x = CASES["8_weight_norm"]()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DempError, match="parametrization.*remove_parametrizations"):
        demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_multi_input_models_agree_across_the_api(form):
    torch.manual_seed(0)  # the initialisation decides whether a unit is naturally dead too
    model, (image, meta) = two_inputs()
    inputs = (image, meta) if form == "tuple" else {"image": image, "meta": meta}
    sites = demp.list_sites(model, inputs)
    assert [(s.name, s.width) for s in sites] == [("/relu#0", 6), ("/relu#1", 4)]
    dead = demp.find_dead_units(model, [(inputs, None)])
    report = demp.remove_units(model, dead, inputs)
    assert report.units_removed == 3
    assert {s.name: s.width for s in demp.list_sites(model, inputs)} == report.widths


def test_reasons_name_the_cause_in_one_short_line():
    model, x = CASES["11_channel_scale"]()
    report = demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    (reason,) = report.sites["/relu"].reasons
    assert reason == "unsupported operation 'sum' is tied to its channels"


def test_groupnorm_group_across_a_concat_goes_whole_or_stays():
    """A group split by the seam: half dead, it stays (whole, it goes and the norm keeps 4 per group)."""
    model, x = CASES["15_groupnorm_cat"]()
    report = demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert (model.gn.num_groups, model.gn.num_channels) == (4, 16)
    assert report.sites["/relu#0"].reasons == {"minimum width, whole GroupNorm groups or balanced grouped conv": 2}
    model, x = CASES["15_groupnorm_cat_whole"]()
    demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert (model.gn.num_groups, model.gn.num_channels, model.a.out_channels, model.b.out_channels) == (3, 12, 4, 8)



def test_fused_norm_act_layer_with_a_registered_pruner():
    class Counting(demp.NormActPruner):
        calls = 0

        def prune_out_channels(self, layer, idxs):
            Counting.calls += 1
            return super().prune_out_channels(layer, idxs)

        prune_in_channels = prune_out_channels  # a norm's in and out channels are one dimension

    model, x = CASES["10_fused"]()
    opt = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    opt.step()
    with torch.no_grad():
        before = model.eval()(x)
    report = demp.remove_units(model, demp.find_dead_units(model, [x]), x, optimizer=opt,
                               pruners={BatchNormAct2d: Counting()})
    assert report.units_removed == 6 and Counting.calls == 2
    assert (model.n1.num_features, model.n1.running_var.numel(), model.c2.in_channels) == (5, 5, 5)
    assert opt.state[model.n1.weight]["exp_avg"].shape == (5,)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
