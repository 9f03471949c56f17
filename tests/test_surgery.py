"""Removal keeps the function on the probe data and leaves the optimizer exactly right."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp import DempError
from archs import ARCHS, ResNet, example, kept_indices, plant_dead, randomise_norms


def planted(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = ARCHS[name]()
    randomise_norms(model, seed)
    plant_dead(model, 0.4, seed)
    return model.eval(), example(name, seed=seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_removal_keeps_function(name):
    model, x = planted(name)
    dead = demp.find_dead_units(model, [x[:4], x[4:]])
    assert sum(int(m.sum()) for m in dead.values()) > 0
    with torch.no_grad():
        before = model(x)
    report = demp.remove_units(model, dead, x[:2])
    with torch.no_grad():
        after = model(x)
    assert report.units_removed > 0, report.sites
    assert report.params_after < report.params_before
    assert report.params_after == demp.count_params(model)
    assert rel_err(after, before) <= 1e-5
    assert after.shape == before.shape  # classifier keeps its outputs
    # the widths reported are the model's widths now
    assert {s.name: s.width for s in demp.list_sites(model, x[:2])} == report.widths


def test_naturally_dead_units_are_removed_exactly():
    torch.manual_seed(1)
    model = ARCHS["vgg"]()
    randomise_norms(model)
    with torch.no_grad():  # push some biases down until units die on their own
        model.features[1].bias[:3] = -5.0
        model.fc[1].bias[:4] = -6.0
    model.eval()
    x = example("vgg", 32)
    dead = demp.find_dead_units(model, [x])
    assert dead["features.2"][:3].all() and dead["fc.2"][:4].all()
    with torch.no_grad():
        before = model(x)
    demp.remove_units(model, dead, x[:2])
    with torch.no_grad():
        assert rel_err(model(x), before) <= 1e-5


def test_residual_independent_vs_coupled():
    """ChannelSelect lets a block's output lose a unit its input keeps; a plain add cannot."""
    results = {}
    for coupled in (False, True):
        torch.manual_seed(0)
        model = ResNet(coupled=coupled)
        randomise_norms(model)
        with torch.no_grad():  # kill channel 2 at the output of b1 only
            model.b1.bn2.weight[2] = 0
            model.b1.bn2.bias[2] = -5
        model.eval()
        x = example("resnet", 16)
        dead = demp.find_dead_units(model, [x])
        site = "b1.relu#1"
        assert dead[site][2]
        with torch.no_grad():
            before = model(x)
        report = demp.remove_units(model, dead, x[:2])
        with torch.no_grad():
            assert rel_err(model(x), before) <= 1e-5
        results[coupled] = report.sites[site]
    assert results[False].removed >= 1
    assert results[True].removed == 0 and results[True].kept_dead >= 1
    assert any("coupled" in r for r in results[True].reasons)


def test_depthwise_coupling_only_removes_when_consumer_sees_zeros():
    torch.manual_seed(0)
    model = ARCHS["mobilenet"]()
    randomise_norms(model)
    blk = model.blocks[0].body
    with torch.no_grad():
        blk[1].weight[3], blk[1].bias[3] = 0, -1     # expand unit 3 dead ...
        blk[4].weight[3], blk[4].bias[3] = 0, 1      # ... but its depthwise output is live
        blk[4].weight[5], blk[4].bias[5] = 0, -1     # depthwise unit 5 dead: removable
    model.eval()
    x = example("mobilenet", 16)
    dead = demp.find_dead_units(model, [x])
    with torch.no_grad():
        before = model(x)
    report = demp.remove_units(model, dead, x[:2])
    with torch.no_grad():
        assert rel_err(model(x), before) <= 1e-5
    expand, dw = report.sites["blocks.0.body.2"], report.sites["blocks.0.body.5"]
    assert dead["blocks.0.body.2"][3] and not dead["blocks.0.body.5"][3]
    assert expand.kept_dead == 1 and any("coupled" in r for r in expand.reasons)  # unit 3 stays
    assert dw.removed == dw.dead >= 1 and dead["blocks.0.body.5"][5]
    assert expand.removed == dw.removed   # the expansion units feeding dead depthwise units went too


def test_min_width_is_kept_and_reported():
    model, x = planted("vgg")
    with torch.no_grad():
        model.features[5].weight.zero_()
        model.features[5].bias.fill_(-1)
    dead = demp.find_dead_units(model, [x])
    assert dead["features.6"].all()
    report = demp.remove_units(model, dead, x[:2], min_units=2)
    assert report.sites["features.6"].width_after == 2
    assert any("minimum width" in r for r in report.sites["features.6"].reasons)


def test_grouped_conv_and_groupnorm_constraints():
    model, x = planted("grouped", seed=3)
    dead = demp.find_dead_units(model, [x])
    report = demp.remove_units(model, dead, x[:2])
    assert report.units_removed > 0
    assert model.c2.out_channels % 2 == 0 and model.c2.in_channels % 2 == 0
    assert model.n3.num_channels % model.n3.num_groups == 0
    assert model.n3.num_channels // model.n3.num_groups == 2


def dead_in_train_mode(model, x):
    """Dead masks under batch statistics (buffers restored afterwards)."""
    from demp.core.detection import SiteTracer
    buffers = copy.deepcopy(model.state_dict())
    sums = []
    tracer = SiteTracer(model, lambda c, out: sums.append(
        out.sum(dim=[d for d in range(out.dim()) if d != c.channel_dim])))
    with torch.no_grad(), tracer:
        model(x)
    model.load_state_dict(buffers)
    return {n: s <= 0 for n, s in zip(tracer.names(), sums)}


def _train_steps(model, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", ["vgg", "resnet", "densenet", "grouped"])
def test_next_step_equals_unpruned_step_restricted(name, opt_name):
    model, x = planted(name)
    model.train()
    for m in model.modules():  # dropout masks depend on the width, so switch it off here
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    y = torch.arange(len(x)) % 5
    opt = OPTIMIZERS[opt_name](model.parameters())
    _train_steps(model, opt, x, y, 2)
    # units dead in eval mode but live under batch statistics would change the training step,
    # so remove only units dead in both modes (the planted ones, which training keeps dead)
    dead = {n: m & train_dead[n] for n, m in demp.find_dead_units(model, [x]).items()
            for train_dead in [dead_in_train_mode(model, x)]}
    keep = kept_indices(model, dead, x[:2])
    ref_model, ref_opt = copy.deepcopy((model, opt))  # one deepcopy keeps params and state tied
    names = [n for n, _ in model.named_parameters()]
    state_before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}

    demp.remove_units(model, dead, x[:2], optimizer=opt)
    params = dict(model.named_parameters())
    # optimizer holds exactly the new parameters, with sliced state and kept step counters
    held = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()} and len(held) == len(names)
    assert set(map(id, opt.state)) == {id(p) for p in model.parameters()}
    for n, p in params.items():
        for k, v in opt.state[p].items():
            old = state_before[n][k]
            if torch.is_tensor(v) and v.dim() > 0:
                assert torch.equal(v.flatten(), old.flatten()[keep[n]]), (n, k)
            else:
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(old)), (n, k)

    _train_steps(model, opt, x, y, 1)
    _train_steps(ref_model, ref_opt, x, y, 1)
    ref = dict(ref_model.named_parameters())
    for n, p in params.items():
        expect = ref[n].detach().flatten()[keep[n]]
        assert torch.allclose(p.detach().flatten(), expect, rtol=1e-5, atol=1e-6), n


def test_frozen_params_buffers_and_mode_survive():
    model, x = planted("vgg")
    model.features[1].weight.requires_grad_(False)
    model.train()
    model.fc[3].eval()  # a submodule in its own mode
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    dead = demp.find_dead_units(model, [x])
    assert model.training and not model.fc[3].training
    demp.remove_units(model, dead, x[:2], optimizer=opt)
    assert model.training and not model.fc[3].training and model.features[1].training
    assert not model.features[1].weight.requires_grad
    assert model.features[1].running_mean.numel() == model.features[1].weight.numel()
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.features[1].weight) not in held


def test_lr_scheduler_and_param_groups_survive():
    model, x = planted("vgg")
    head = list(model.fc.parameters())
    body = list(model.features.parameters())
    opt = torch.optim.SGD([{"params": body, "lr": 0.1}, {"params": head, "lr": 0.01, "momentum": 0.5}],
                          lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_steps(model.train(), opt, x, torch.zeros(len(x), dtype=torch.long), 1)
    sched.step()
    dead = demp.find_dead_units(model, [x])
    demp.remove_units(model, dead, x[:2], optimizer=opt)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]
    assert opt.param_groups[1]["momentum"] == 0.5
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.fc.parameters()}
    _train_steps(model, opt, x, torch.zeros(len(x), dtype=torch.long), 1)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.0025]


class _Factored(torch.optim.SGD):
    """An optimizer with per-row state (like Adafactor), which cannot be sliced generically."""

    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                self.state[p]["row"] = torch.zeros(p.shape[0] + 1)
        return super().step(closure)


def _snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [list(map(id, g["params"])) for g in opt.param_groups])


def _assert_same(model, opt, snap):
    state, ids = snap
    now = model.state_dict()
    assert state.keys() == now.keys()
    for k in state:
        torch.testing.assert_close(now[k], state[k], rtol=0, atol=0, equal_nan=True)
    assert [list(map(id, g["params"])) for g in opt.param_groups] == ids


@pytest.mark.parametrize("case", ["unknown_site", "wrong_length", "wrong_dtype", "device",
                                  "nan", "optimizer", "list_inputs", "wrong_channels",
                                  "foreign_optimizer", "nan_buffer"])
def test_bad_input_is_refused_before_anything_changes(case):
    model, x = planted("vgg")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dead = demp.find_dead_units(model, [x])
    example_inputs = x[:2]
    if case == "unknown_site":
        dead["features.99"] = torch.zeros(3, dtype=torch.bool)
        match = "unknown site 'features.99'.*features.2"
    elif case == "wrong_length":
        dead["features.2"] = torch.zeros(5, dtype=torch.bool)
        match = "has 5 entries but the site has 8 units"
    elif case == "wrong_dtype":
        dead["features.2"] = torch.zeros(8)
        match = "must be a 1-D BoolTensor"
    elif case == "device":
        example_inputs = x[:2].to("meta")
        match = "example_inputs is on meta but the model is on cpu"
    elif case == "nan":
        with torch.no_grad():
            model.fc[0].weight[0, 0] = float("nan")
        match = "NaN or inf"
    elif case == "list_inputs":
        example_inputs = [x[:2]]
        match = "example_inputs is a list; give a tensor, a tuple"
    elif case == "wrong_channels":
        example_inputs = torch.randn(2, 4, 8, 8)
        match = "VGG cannot run on example_inputs .*RuntimeError.*tuple of positional"
    elif case == "foreign_optimizer":
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        match = "optimizer holds none of the model's parameters"
    elif case == "nan_buffer":
        model.features[1].running_var[0] = float("inf")
        match = "buffer 'features.1.running_var' holds NaN or inf"
    else:
        opt = _Factored(model.parameters(), lr=0.1)
        _train_steps(model.train(), opt, x, torch.zeros(len(x), dtype=torch.long), 1)
        model.eval()
        match = "state 'row' of shape"
    snap = _snapshot(model, opt)
    with pytest.raises(DempError, match=match):
        demp.remove_units(model, dead, example_inputs, optimizer=opt)
    _assert_same(model, opt, snap)


def test_forced_removal_of_live_units_for_baselines():
    model, x = planted("vgg")
    widths = {s.name: s.width for s in demp.list_sites(model, x[:2])}
    marks = {n: torch.zeros(w, dtype=torch.bool) for n, w in widths.items()}
    marks["features.2"][:4] = True  # live units
    with torch.no_grad():
        before = model(x)
    report = demp.remove_units(model, marks, x[:2], exact=False)
    assert report.sites["features.2"].removed == 4
    assert model.features[0].out_channels == 4 and model.features[4].in_channels == 4
    with torch.no_grad():
        assert rel_err(model(x), before) > 1e-3  # live units went, so the function changed


def test_grouped_conv_never_collapses_to_one_output_per_group():
    """At one output per group torch-pruning would take a grouped conv for a depthwise one."""
    model, x = planted("grouped")
    widths = {s.name: s.width for s in demp.list_sites(model, x[:2])}
    everything = {n: torch.ones(w, dtype=torch.bool) for n, w in widths.items()}
    demp.remove_units(model, everything, x[:2], exact=False)
    assert model.c2.groups == 2 and model.c2.out_channels == 4 and model.c2.in_channels == 2
    assert model(x).shape == (len(x), 5)


def test_model_on_meta_device_is_refused():
    model = ARCHS["vgg"]().to("meta")
    with pytest.raises(DempError, match="meta device"):
        demp.remove_units(model, {}, torch.randn(2, 3, 8, 8, device="meta"))
