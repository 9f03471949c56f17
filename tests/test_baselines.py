"""Baselines: gate scores against hand-computed values, selection and timing rules, and every
method end to end (real removal, optimizer kept exact, training continues, resume)."""
import copy
from dataclasses import dataclass
import io
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp import DempError
from demp.app.methods import scores as S
from demp.app.methods import selection as P
from demp.app.methods import METHODS, MethodConfig, MethodContext, create_method
from archs import MLP, MobileNet, ResNet, Transformer, VGG, example, randomise_norms

BATCH = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread contention on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with learnable labels (argmax of a fixed random projection)."""
    x = example(name, n, seed)
    proj = torch.randn(x[0].numel(), 4, generator=torch.Generator().manual_seed(99), dtype=x.dtype)
    return x, (x.flatten(1) @ proj).argmax(1)


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


# ----------------------------------------------------------------------------- gate scores

class ConvNet(nn.Module):
    """Conv (with bias) -> ReLU -> conv -> ReLU -> linear: gates right after layers, no norm."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 6, 3), nn.Linear(6 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


@pytest.mark.parametrize("make, layers", [(MLP, {"/relu#0": "fc1", "/relu#1": "fc2"}),
                                          (ConvNet, {"/relu#0": "c1", "/relu#1": "c2"})])
def test_gate_gradient_is_weight_times_weight_gradient(make, layers):
    """Positive homogeneity of ReLU: dL/dc_j = sum_i w_ji dL/dw_ji + b_j dL/db_j (exact)."""
    torch.manual_seed(0)
    model = make().double()
    x, y = labelled("mlp" if make is MLP else "vgg", 12)
    x = x.double()
    g = S.gate_gradient(model, [(x[:6], y[:6]), (x[6:], y[6:])], F.cross_entropy)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves .grad alone
    (F.cross_entropy(model(x[:6]), y[:6]) + F.cross_entropy(model(x[6:]), y[6:])).backward()
    for site, layer in layers.items():
        m = getattr(model, layer)
        expect = (m.weight * m.weight.grad).flatten(1).sum(1) + m.bias * m.bias.grad
        torch.testing.assert_close(g[site], expect, rtol=1e-10, atol=1e-14)


def test_gate_gradient_after_batchnorm_is_gamma_beta_and_scoring_is_pure():
    """With BN (batch statistics) before the ReLU the identity moves to gamma and beta."""
    torch.manual_seed(0)
    model = no_dropout(VGG()).double()
    randomise_norms(model)
    model.eval()
    x, y = labelled("vgg", 16)
    x = x.double()
    buffers = copy.deepcopy(dict(model.named_buffers()))
    g = S.gate_gradient(model, [(x, y)], F.cross_entropy)
    assert not model.training  # mode restored
    for n, b in model.named_buffers():  # running statistics untouched
        assert torch.equal(b, buffers[n]), n
    model.train()
    F.cross_entropy(model(x), y).backward()
    for site, bn in {"features.2": model.features[1], "features.6": model.features[5], "fc.2": model.fc[1]}.items():
        expect = bn.weight * bn.weight.grad + bn.bias * bn.bias.grad
        torch.testing.assert_close(g[site], expect, rtol=1e-9, atol=1e-13)
    assert torch.equal(S.gate_saliency(model, [(x, y)], F.cross_entropy)["fc.2"], g["fc.2"].abs())


def test_hessian_gradient_matches_central_differences():
    torch.manual_seed(0)
    model = ResNet().double()
    randomise_norms(model)
    x, y = labelled("resnet", 12)
    batches = [(x[:6].double(), y[:6]), (x[6:].double(), y[6:])]
    g = S.gate_gradient(model, batches, F.cross_entropy)
    hg = S.gate_hessian_gradient(model, batches, F.cross_entropy)
    eps = 1e-4
    plus = S.gate_gradient(model, batches, F.cross_entropy, {n: 1 + eps * v for n, v in g.items()})
    minus = S.gate_gradient(model, batches, F.cross_entropy, {n: 1 - eps * v for n, v in g.items()})
    scale = max(float(h.abs().max()) for h in hg.values())
    for n in hg:
        fd = (plus[n] - minus[n]) / (2 * eps)
        assert float((fd - hg[n]).abs().max()) <= 1e-6 * scale, n
    assert scale > 0
    crop = S.crop_saliency(model, batches, F.cross_entropy)
    assert all(torch.equal(crop[n], hg[n].abs()) for n in hg)


class Attention(nn.Module):
    """ReLU units feeding fused scaled-dot-product attention (no double backward of its own)."""

    def __init__(self):
        super().__init__()
        self.fc, self.qkv, self.head = nn.Linear(8, 12), nn.Linear(12, 24), nn.Linear(8, 4)

    def forward(self, x):
        q, k, v = self.qkv(F.relu(self.fc(x))).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        return self.head(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2).mean(1))


def test_hessian_gradient_through_fused_attention():
    torch.manual_seed(0)
    x, y = torch.randn(4, 5, 8), torch.arange(4)
    hg = S.gate_hessian_gradient(Attention(), [(x, y)], F.cross_entropy)["/relu"]
    assert hg.shape == (12,) and torch.isfinite(hg).all() and hg.abs().sum() > 0


# ----------------------------------------------------------------------------- weight scores

def test_incoming_weight_norms_and_gamma_scores_by_hand():
    torch.manual_seed(0)
    model = ResNet()
    randomise_norms(model)
    x = example("resnet", 2)
    w = S.incoming_weight_norms(model, x)
    gam = S.norm_scale_magnitudes(model, x)

    def rows(conv):
        return conv.weight.detach().double().flatten(1).pow(2).sum(1)
    torch.testing.assert_close(w["stem.2"], rows(model.stem[0]).sqrt())
    torch.testing.assert_close(gam["b1.relu#0"], model.b1.bn1.weight.detach().double().abs())
    # after a projection shortcut both producing convs and both BNs feed each unit
    b3 = model.b3
    torch.testing.assert_close(w["b3.relu#1"], (rows(b3.conv2) + rows(b3.short[0])).sqrt())
    torch.testing.assert_close(gam["b3.relu#1"],
                               (b3.bn2.weight.abs() + b3.short[1].weight.abs()).detach().double())
    # after an identity (ChannelSelect) shortcut only the block's own conv produces the unit
    torch.testing.assert_close(w["b1.relu#1"], rows(model.b1.conv2).sqrt())
    mlp = MLP()
    assert all(torch.isinf(s).all() for s in S.norm_scale_magnitudes(mlp, example("mlp", 2)).values())
    torch.testing.assert_close(S.incoming_weight_norms(mlp, example("mlp", 2))["/relu#1"],
                               mlp.fc2.weight.detach().double().norm(dim=1))


def test_coupled_units_share_their_mean_score():
    """An expansion conv's units are removed only with the depthwise units they feed."""
    torch.manual_seed(0)
    model = MobileNet()
    x = example("mobilenet", 2)
    g = torch.Generator().manual_seed(0)
    scores = {s.name: torch.rand(s.width, generator=g, dtype=torch.float64) for s in demp.list_sites(model, x)}
    shared = S.share_coupled(scores, model, x)
    expand, dw = "blocks.0.body.2", "blocks.0.body.5"
    torch.testing.assert_close(shared[expand], (scores[expand] + scores[dw]) / 2)
    torch.testing.assert_close(shared[dw], shared[expand])
    assert torch.equal(shared["stem.2"], scores["stem.2"]) and torch.equal(shared["head.2"], scores["head.2"])
    # magnitude scores are per group already, so sharing leaves them as they are
    w = S.incoming_weight_norms(model, x)
    assert all(torch.equal(S.share_coupled(w, model, x)[n], w[n]) for n in w)


# ----------------------------------------------------------------------------- selection and timing

def test_select_lowest_global_percentile_and_min_units():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 0.05, 4.0, 0.15]),
              "c": torch.tensor([0.01, 0.02]), "d": torch.tensor([math.inf, 0.0])}
    marks = P.select_lowest(scores, 5 / 11, min_units=1)
    assert {n: m.tolist() for n, m in marks.items()} == {
        "a": [True, False, False], "b": [False, True, False, True], "c": [True, False],
        "d": [False, True]}  # each site keeps its best unit (d's is the unscorable inf one)
    removed = torch.cat([s[m] for s, m in zip(scores.values(), marks.values())])
    assert int(sum(m.sum() for m in marks.values())) == 5
    # global percentile: every removed score is below every kept one but the protected best
    assert float(removed.max()) < 0.2
    marks = P.select_lowest(scores, 1.0, min_units=2)
    assert [int((~m).sum()) for m in marks.values()] == [2, 2, 2, 2]
    assert not any(m.any() for m in P.select_lowest(scores, 0.0).values())
    with pytest.raises(DempError, match="fraction must be in"):
        P.select_lowest(scores, 1.5)
    with pytest.raises(DempError, match="min_units must be >= 1"):
        P.select_lowest(scores, 0.5, min_units=0)
    with pytest.raises(DempError, match="NaN"):
        P.select_lowest({"a": torch.tensor([float("nan"), 1.0])}, 0.5)


def test_cubic_and_round_schedules():
    assert P.cubic_fraction(10, 10, 60, 0.8) == 0.0
    assert P.cubic_fraction(60, 10, 60, 0.8) == pytest.approx(0.8)
    assert P.cubic_fraction(0, 10, 60, 0.8) == 0.0 and P.cubic_fraction(99, 10, 60, 0.8) == pytest.approx(0.8)
    assert P.cubic_fraction(35, 10, 60, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    values = [P.cubic_fraction(t, 10, 60, 0.8) for t in range(10, 61)]
    assert values == sorted(values)
    with pytest.raises(DempError, match="start < end"):
        P.cubic_fraction(1, 5, 5, 0.5)
    assert P.round_fraction(5, 5, 0.9) == pytest.approx(0.9)
    assert 1 - P.round_fraction(1, 5, 0.9) == pytest.approx(0.1 ** 0.2)  # same share every round


@pytest.mark.parametrize("history, target, fires", [
    ([], 0.5, False),
    ([0.2], 0.5, False),                 # one epoch: no change yet
    ([0.0, 0.3], 0.5, False),            # change from 0 is not finite
    ([0.2, 0.4], 0.5, False),            # +100% >= 0.5
    ([0.2, 0.29], 0.5, True),            # +45% < 0.5
    ([0.2, 0.29], 0.4, False),           # ... but not below 1 - density = 0.4
    ([0.25, 0.375], 0.5, False),         # +50% is not strictly below
    ([0.4, 0.4], 0.9, False),            # no change
    ([0.4, 0.35], 0.9, False),           # shrinking: not positive
    ([0.1, 0.3, 0.36], 0.25, True),      # +200% then +20%: the newest epoch decides
    ([0.1, 0.11, 0.5], 0.25, False),     # +10% earlier, but the newest is +355%
])
def test_early_trigger_rule(history, target, fires):
    assert P.early_trigger(history, target) is fires


def test_early_trigger_refuses_bad_target():
    with pytest.raises(DempError, match=r"in \(0, 1\)"):
        P.early_trigger([0.1, 0.11], 1.0)


# ----------------------------------------------------------------------------- methods end to end

@dataclass
class Ctx(MethodContext):
    """The method's context plus the test loop's epoch length."""
    steps_per_epoch: int = 1


def make_ctx(model: nn.Module, steps_per_epoch: int, epochs: int, seed: int = 0) -> Ctx:
    name = "mlp" if isinstance(model, MLP) else "vgg"
    x, y = labelled(name, BATCH * steps_per_epoch, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)

    def batches(n):
        return [(x[(i % steps_per_epoch) * BATCH:][:BATCH], y[(i % steps_per_epoch) * BATCH:][:BATCH])
                for i in range(n)]
    return Ctx(model=model, optimizer=opt, example_inputs=x[:2], probe=[x[:64]],
               total_steps=steps_per_epoch * epochs, train_batches=batches, loss_fn=F.cross_entropy,
               seed=seed, steps_per_epoch=steps_per_epoch)


def run(method, ctx: Ctx, epochs: int, start_epoch: int = 0, setup: bool = True) -> list:
    """A plain training loop calling the method's hooks; returns the removal reports."""
    model, opt = ctx.model, ctx.optimizer
    if setup:
        method.setup(ctx)
    reports = [method.on_train_start()] if setup else []
    for epoch in range(start_epoch, epochs):
        for step, (x, y) in enumerate(ctx.train_batches(ctx.steps_per_epoch), epoch * ctx.steps_per_epoch):
            model.train()
            opt.zero_grad()
            loss = ctx.loss_fn(model(x), y) + method.penalty()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
            reports.append(method.after_step(step, loss))
        reports.append(method.on_epoch_end(epoch))
    return [r for r in reports if r is not None]


def units(model, x) -> dict[str, int]:
    return {s.name: s.width for s in demp.list_sites(model, x)}


def assert_optimizer_exact(model, opt):
    held = [p for g in opt.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    assert set(map(id, opt.state)) <= {id(p) for p in model.parameters()}
    for p, state in opt.state.items():
        for v in state.values():
            assert not (torch.is_tensor(v) and v.dim() > 0) or v.shape == p.shape


CASES = {  # method -> (arch, extra settings); 3 epochs of 6 steps
    "snap": (VGG, {"score_batches": 2}), "cropit": (ResNet, {"score_batches": 2}),
    "earlysnap": (ResNet, {"score_batches": 2}), "earlycrop": (VGG, {"score_batches": 2}),
    "slimming": (VGG, {"slimming_reg": 1e-3, "prune_at": 0.4}),
    "magnitude": (ResNet, {"prune_steps": 3}), "random": (VGG, {"prune_steps": 3}),
}


@pytest.mark.filterwarnings("error")  # the early triggers fire and every target is met
@pytest.mark.parametrize("name", sorted(CASES))
def test_method_removes_target_fraction_and_training_continues(name):
    arch, extra = CASES[name]
    torch.manual_seed(0)
    model = no_dropout(arch())
    ctx = make_ctx(model, steps_per_epoch=6, epochs=3)
    before = units(model, ctx.example_inputs)
    params0 = demp.count_params(model)
    method = create_method(MethodConfig(name, target=0.5, **extra))
    reports = run(method, ctx, epochs=3)
    reports.append(method.finish())
    assert method.finish() is None  # pruning happens once
    after = units(model, ctx.example_inputs)
    n0, n1 = sum(before.values()), sum(after.values())
    assert n0 - n1 == round(0.5 * n0), (before, after)
    assert all(after[s] >= 1 and after[s] <= before[s] for s in before)
    assert sum(r.units_removed for r in reports if r) == n0 - n1
    assert demp.count_params(model) < params0
    assert_optimizer_exact(model, ctx.optimizer)
    if name in ("snap", "cropit"):  # before training: on_train_start removed everything
        assert reports[0].units_after == n1
    run(method, ctx, epochs=1, setup=False)  # training goes on at the new widths
    assert_optimizer_exact(model, ctx.optimizer)


def test_coupled_network_reaches_the_target():
    torch.manual_seed(0)
    model = MobileNet()
    ctx = make_ctx(model, steps_per_epoch=2, epochs=1)
    method = create_method(MethodConfig("cropit", target=0.5, score_batches=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.setup(ctx)
        report = method.on_train_start()
    # coupled pairs go together, so an odd count may end one unit short, with a warning
    short = round(0.5 * report.units_before) - report.units_removed
    assert short in (0, 1)
    assert bool(short) == any("1 units short" in str(w.message) for w in caught)
    assert_optimizer_exact(model, ctx.optimizer)
    run(method, ctx, epochs=1, setup=False)


def test_unscorable_units_stay_and_the_shortfall_is_reported():
    """The transformer's FFN units have no norm scale: slimming cannot remove them."""
    torch.manual_seed(0)
    model = Transformer()
    ctx = make_ctx(model, steps_per_epoch=2, epochs=1)
    method = create_method(MethodConfig("slimming", target=0.5, prune_at=1.0))
    before = units(model, ctx.example_inputs)
    with pytest.warns(UserWarning, match="12 units short of removing 0.5 of the 24 units"):
        run(method, ctx, epochs=1)
    assert units(model, ctx.example_inputs) == before


def test_early_method_fires_at_the_trigger_epoch():
    torch.manual_seed(0)
    model = no_dropout(VGG())
    ctx = make_ctx(model, steps_per_epoch=6, epochs=4)
    method = create_method(MethodConfig("earlysnap", target=0.5, score_batches=2))
    n0 = sum(units(model, ctx.example_inputs).values())
    reports = run(method, ctx, epochs=4)
    assert method.done and len(reports) == 1 and reports[0].units_removed == round(0.5 * n0)
    hist = method.history  # r at each epoch end up to the trigger, which is the first firing
    assert len(hist) < 4 and P.early_trigger(hist, 0.5)
    assert not any(P.early_trigger(hist[:j], 0.5) for j in range(1, len(hist)))
    assert method.theta0 is None  # theta_0 is freed once it has done its job


def test_early_method_that_never_fires_prunes_at_finish():
    torch.manual_seed(0)
    model = no_dropout(VGG())
    ctx = make_ctx(model, steps_per_epoch=4, epochs=1)
    method = create_method(MethodConfig("earlycrop", target=0.3, rounds=2, score_batches=1))
    assert run(method, ctx, epochs=1) == []  # one epoch: no relative change yet
    with pytest.warns(UserWarning, match="never fired"):
        report = method.finish()
    assert report.units_removed == round(0.3 * report.units_before)


def test_magnitude_events_follow_the_cubic_schedule():
    torch.manual_seed(0)
    model = no_dropout(VGG())
    ctx = make_ctx(model, steps_per_epoch=10, epochs=2)
    method = create_method(MethodConfig("magnitude", target=0.6, prune_start=0.2,
                                        prune_end=0.8, prune_steps=3))
    n0 = sum(units(model, ctx.example_inputs).values())
    removed_at = {}
    for step in range(20):
        if step == 0:
            method.setup(ctx)
        r = method.after_step(step)
        if r is not None:
            removed_at[step + 1] = n0 - r.units_after
    assert method.plan == [(8, pytest.approx(0.6 * (1 - (2 / 3) ** 3))),
                           (12, pytest.approx(0.6 * (1 - (1 / 3) ** 3))), (16, pytest.approx(0.6))]
    assert removed_at == {at: round(frac * n0) for at, frac in method.plan}


def test_random_is_seeded_and_differs_from_magnitude():
    kept = []
    for name, seed in [("random", 1), ("random", 1), ("random", 2), ("magnitude", 1)]:
        torch.manual_seed(0)
        model = no_dropout(VGG())
        ctx = make_ctx(model, steps_per_epoch=2, epochs=1, seed=seed)
        method = create_method(MethodConfig(name, target=0.5, prune_steps=1))
        method.setup(ctx)
        method.finish()
        kept.append(model.features[0].weight.detach().clone())
    assert torch.equal(kept[0], kept[1])
    assert not (kept[0].shape == kept[2].shape and torch.equal(kept[0], kept[2]))
    assert not (kept[0].shape == kept[3].shape and torch.equal(kept[0], kept[3]))


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if isinstance(x, list) and x and torch.is_tensor(x[0]):
            if len(x) != len(y) or not all(torch.equal(p, q) for p, q in zip(x, y)):
                return False
        elif torch.is_tensor(x):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("name, epochs", [("snap", 1), ("earlysnap", 1), ("slimming", 1),
                                          ("magnitude", 2), ("random", 2)])
def test_state_dict_round_trip_resumes_the_same_run(name, epochs):
    """Resume in the middle: setup, load_state_dict, on_train_start continue exactly as the first run."""
    own = {"snap": {"rounds": 2, "score_batches": 1}, "earlysnap": {"rounds": 2, "score_batches": 1},
           "slimming": {"prune_at": 0.5}}.get(name, {"prune_start": 0.0, "prune_end": 1.0, "prune_steps": 3})
    config = MethodConfig(name, target=0.5, **own)
    torch.manual_seed(0)
    model = no_dropout(VGG())
    ctx = make_ctx(model, steps_per_epoch=3, epochs=3)
    method = create_method(config)
    run(method, ctx, epochs=epochs)
    state = roundtrip(method.state_dict())
    widths = units(model, ctx.example_inputs)
    twin_model, twin_opt = copy.deepcopy((model, ctx.optimizer))
    twin_ctx = copy.copy(ctx)
    twin_ctx.model, twin_ctx.optimizer = twin_model, twin_opt
    twin = create_method(config)
    twin.setup(twin_ctx)
    twin.load_state_dict(state)
    assert twin.on_train_start() is None  # nothing is pruned again on resume
    assert units(twin_model, ctx.example_inputs) == widths
    assert same_state(twin.state_dict(), method.state_dict())
    torch.manual_seed(1)
    run(method, ctx, epochs=3, start_epoch=epochs, setup=False)
    method.finish()
    torch.manual_seed(1)
    run(twin, twin_ctx, epochs=3, start_epoch=epochs, setup=False)
    twin.finish()
    assert units(twin_model, ctx.example_inputs) == units(model, ctx.example_inputs)
    assert same_state(twin.state_dict(), method.state_dict())
    for p, q in zip(model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("settings, match", [
    ({"target": 0.0}, r"target must be .* in \(0, 1\), got 0.0"),
    ({"target": 1.0}, r"in \(0, 1\), got 1.0"),
    ({"name": "cropit", "rounds": 0}, "rounds must be >= 1"),
    ({"name": "earlysnap", "score_batches": 0}, "score_batches must be >= 1"),
    ({"name": "slimming", "prune_at": 0.0}, r"prune_at must be .* in \(0, 1\]"),
    ({"name": "slimming", "slimming_reg": -1.0}, "slimming_reg must be >= 0"),
    ({"name": "magnitude", "prune_start": 0.6, "prune_end": 0.6}, "prune_start < prune_end"),
    ({"name": "random", "prune_steps": 0}, "prune_steps must be >= 1"),
    ({"name": "random", "min_units": 0}, "min_units must be >= 1"),
])
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(DempError, match=match):
        create_method(MethodConfig(settings.pop("name", "snap"), **settings))


def test_registry_and_slimming_without_norm_layers():
    assert {"snap", "cropit", "earlysnap", "earlycrop", "slimming", "magnitude", "random"} <= set(METHODS)
    method = create_method(MethodConfig("slimming"))
    with pytest.raises(DempError, match="no BatchNorm.*use 'magnitude'"):
        method.setup(make_ctx(MLP(), steps_per_epoch=1, epochs=1))


# ----------------------------------------------------------------------------- transformer FFN units

def zoo_ctx(name: str, steps_per_epoch: int, epochs: int) -> Ctx:
    """A tiny zoo transformer (ViT on 16x16 images or the byte LM on 16-byte sequences) and its data."""
    from demp.app.measure import CrossEntropy
    from demp.app.models import create_model
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = BATCH * steps_per_epoch
    if name == "vit_tiny":
        model = create_model(name, num_classes=4, width=0.25, image_size=16, depth=2, mlp_ratio=4)
        x = torch.randn(n, 3, 16, 16, generator=g)
        y = (x.flatten(1) @ torch.randn(x[0].numel(), 4, generator=g)).argmax(1)
    else:
        model = create_model(name, num_classes=256, width=0.25, context=16, depth=2)
        data = torch.randint(0, 256, (n * 16 + 1,), generator=g)
        x, y = data[:-1].view(n, 16), data[1:].view(n, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def batches(k):
        return [(x[(i % steps_per_epoch) * BATCH:][:BATCH], y[(i % steps_per_epoch) * BATCH:][:BATCH])
                for i in range(k)]
    return Ctx(model=model, optimizer=opt, example_inputs=x[:2], probe=[x[:32]],
               total_steps=steps_per_epoch * epochs, train_batches=batches, loss_fn=CrossEntropy(),
               steps_per_epoch=steps_per_epoch)


@pytest.mark.parametrize("model_name", ["vit_tiny", "relu_lm"])
@pytest.mark.parametrize("name", ["snap", "cropit", "earlysnap", "earlycrop", "magnitude", "random"])
def test_baselines_remove_transformer_ffn_units(name, model_name):
    """On a ViT and the byte LM the FFN ReLUs are the only sites: each baseline removes the
    target fraction of FFN units, the optimizer stays exact and the model still trains."""
    ctx = zoo_ctx(model_name, steps_per_epoch=3, epochs=2)
    model, x = ctx.model, ctx.example_inputs
    before = units(model, x)
    assert before and all(s.endswith("ffn.act") for s in before)
    extra = {"score_batches": 2} if name not in ("magnitude", "random") else {"prune_steps": 2}
    method = create_method(MethodConfig(name, target=0.5, **extra))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*early trigger never fired")
        run(method, ctx, epochs=2)
        method.finish()
    after = units(model, x)
    fc1 = [b.ffn.fc1.out_features for b in model.blocks]
    assert sum(fc1) == sum(after.values()) == sum(before.values()) - round(0.5 * sum(before.values()))
    assert [b.ffn.fc2.in_features for b in model.blocks] == fc1
    assert_optimizer_exact(model, ctx.optimizer)
    run(method, ctx, epochs=1, setup=False)   # still runs and trains at the new widths
