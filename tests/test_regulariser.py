"""Regulariser: closed-form penalties, exact gradients, parameter selection, validation."""
import pytest
import torch
import torch.nn as nn

from demp.core.regulariser import (
    REG_FORMS,
    REG_TARGETS,
    norm_scale_params,
    penalty,
    penalty_grad,
    regularised_params,
    shift_pairs,
    shift_push,
    shift_push_grad,
    silenced,
)


def _net() -> tuple[nn.Module, dict[str, nn.Module]]:
    """A model with every supported norm type, a frozen BN, an affine-free BN and a shared LN."""
    parts = {
        "conv": nn.Conv2d(3, 4, 3),
        "bn2d": nn.BatchNorm2d(4),
        "gn": nn.GroupNorm(2, 4),
        "frozen_bn": nn.BatchNorm2d(4),
        "plain_bn": nn.BatchNorm2d(4, affine=False),
        "fc": nn.Linear(4, 6),
        "bn1d": nn.BatchNorm1d(6),
        "ln": nn.LayerNorm(6),
    }
    parts["frozen_bn"].weight.requires_grad_(False)
    parts["frozen_bn"].bias.requires_grad_(False)
    model = nn.Sequential(*parts.values(), parts["ln"])  # the LayerNorm is used twice
    return model, parts


def test_norm_scale_params_selects_trainable_norm_weights_once() -> None:
    model, m = _net()
    got = norm_scale_params(model)
    assert [id(p) for p in got] == [id(m[k].weight) for k in ("bn2d", "gn", "bn1d", "ln")]


def test_regularised_params_targets() -> None:
    model, m = _net()
    assert regularised_params(model, "norm_scales") == norm_scale_params(model)
    got = regularised_params(model, "all_weights")
    want = [m["conv"].weight, m["bn2d"].weight, m["gn"].weight, m["fc"].weight,
            m["bn1d"].weight, m["ln"].weight]
    assert [id(p) for p in got] == [id(p) for p in want]  # biases and the frozen BN excluded


CASES = {
    "l1": 1.5 + 0.0 + 2.0 + 0.25 + 3.0,
    "l2": 2.25 + 0.0 + 4.0 + 0.0625 + 9.0,
    "l1_pos": 1.5 + 0.25 + 3.0,
    "l2_pos": 2.25 + 0.0625 + 9.0,
}


@pytest.mark.parametrize("form,want", CASES.items())
def test_penalty_closed_form(form: str, want: float) -> None:
    params = [torch.tensor([1.5, 0.0, -2.0]), torch.tensor([[0.25], [3.0]])]
    got = penalty(params, form)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want)


def test_penalty_of_no_params_is_zero() -> None:
    assert penalty([], "l1").item() == 0.0 and penalty_grad([], "l1", 1.0) == []


def _exact(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (also tells +0.0 from -0.0)."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(ints), b.view(ints))


@pytest.mark.parametrize("form", REG_FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.3, 7.77e-5, 1.0, 0.0, 123.456, 1e-40])
def test_penalty_grad_matches_autograd_bit_for_bit(
    form: str, dtype: torch.dtype, scale: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = ((9, 1.0), (16, 1e-3), (5, 1e4))
    params = [torch.randn(n, generator=gen, dtype=dtype) * mag for n, mag in sizes]
    params[0][:4] = torch.tensor([0.0, -0.0, -1.0, 2.0], dtype=dtype)  # exact zeros and signs
    params.append(torch.zeros(2, 3, dtype=dtype))
    params = [p.requires_grad_() for p in params]
    want = torch.autograd.grad(scale * penalty(params, form), params)
    got = penalty_grad(params, form, scale)
    assert all(_exact(w, g) for w, g in zip(want, got))
    assert all(not g.requires_grad for g in got)


def test_penalty_grad_is_zero_at_zero() -> None:
    p = torch.zeros(3)
    for form in REG_FORMS:
        assert torch.equal(penalty_grad([p], form, 0.5)[0], torch.zeros(3))


def test_penalty_backpropagates_into_model() -> None:
    model, m = _net()
    loss = 0.1 * penalty(norm_scale_params(model), "l1")
    loss.backward()
    assert torch.equal(m["bn2d"].weight.grad, torch.full((4,), 0.1))
    assert m["frozen_bn"].weight.grad is None and m["conv"].weight.grad is None


def test_bad_names_raise_listing_valid_choices() -> None:
    model, _ = _net()
    with pytest.raises(ValueError, match="'bias'.*gates.*norm_scales.*all_weights"):
        regularised_params(model, "bias")
    with pytest.raises(ValueError, match="'l3'.*l1.*l2_pos"):
        penalty([torch.ones(1)], "l3")
    with pytest.raises(ValueError, match="'L1'.*l1_pos"):
        penalty_grad([torch.ones(1)], "L1", 1.0)
    assert REG_TARGETS == ("gates", "norm_scales", "all_weights")


def test_shift_push_reaches_only_silenced_batchnorm_units() -> None:
    model, parts = _net()
    with torch.no_grad():
        parts["bn2d"].weight.copy_(torch.tensor([1.0, 0.01, -0.5, 0.0]))   # units 1 and 3 silenced
        parts["bn2d"].bias.copy_(torch.tensor([0.3, 0.2, -0.1, 0.4]))
    pairs = shift_pairs(model)
    # trainable affine BatchNorms only: no GroupNorm/LayerNorm, no frozen or affine-free BN
    assert [id(s) for _, s in pairs] == [id(parts["bn2d"].bias), id(parts["bn1d"].bias)]
    assert silenced(parts["bn2d"].weight, 0.05).tolist() == [False, True, False, True]
    total = shift_push(pairs, 0.05)
    assert total.item() == pytest.approx(0.2 + 0.4)   # bn1d's scales are all 1: none silenced
    total.backward()
    grads = shift_push_grad(pairs, 0.05, 0.5)
    assert torch.equal(parts["bn2d"].bias.grad * 0.5, grads[0]) and not grads[1].any()
    assert torch.equal(grads[0], torch.tensor([0.0, 0.5, 0.0, 0.5]))


def test_shift_push_turns_a_silenced_unit_into_a_dead_one() -> None:
    """A unit with scale 0 and shift > 0 outputs a constant; pushing its shift kills it."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.0, 1.0]))
        bn.bias.fill_(0.5)
    x = torch.randn(64, 3)
    assert (torch.relu(bn(x))[:, 1] > 0).all()                  # silenced, not dead
    opt = torch.optim.SGD([bn.bias], lr=0.1)
    for _ in range(10):
        opt.zero_grad()
        shift_push(shift_pairs(bn), 0.05).backward()
        opt.step()
    bn.eval()
    out = torch.relu(bn(x))
    assert (out[:, 1] == 0).all() and (out[:, 0] > 0).any() and bn.bias[0] == 0.5
