"""The safety net of surgery (demp.core.verify): exact rollback and the output comparison."""
import torch
import torch.nn as nn

from demp.core.verify import Snapshot, compare_outputs, flatten_outputs, tolerance


def test_snapshot_undoes_replaced_and_written_tensors_and_the_optimizer():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    weight, bias = model[0].weight, model[0].bias
    before = [t.detach().clone() for t in (weight, bias, model[1].running_mean)]
    state = {k: v.clone() for k, v in opt.state[weight].items()}
    snap = Snapshot(model, opt)
    model[0].weight = nn.Parameter(weight.detach()[:2].clone())      # replaced, as surgery does
    model[0].out_features = 2
    with torch.no_grad():
        bias.add_(1.0)                                               # written in place
        model[1].running_mean.fill_(7.0)
    opt.param_groups[0]["params"].pop()
    opt.state.pop(weight)
    snap.restore()
    assert model[0].weight is weight and model[0].out_features == 3
    assert all(torch.equal(a, b) for a, b in zip(before, (weight, bias, model[1].running_mean)))
    assert opt.param_groups[0]["params"][0] is weight and len(opt.param_groups[0]["params"]) == 4
    assert all(torch.equal(state[k], opt.state[weight][k]) for k in state)


def test_flatten_outputs_reads_nested_containers_in_order():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [t.item() for t in flatten_outputs({"x": a, "y": (b, [c]), "n": 3})] == [0.0, 1.0, 2.0]


def test_compare_outputs_tells_shape_value_and_non_finite_changes():
    x = torch.randn(4, 3)
    assert compare_outputs([x], [x + tolerance(torch.float32) * 0.1 * x.abs().max()]) == ""
    assert "changed shape" in compare_outputs([x], [x[:2]])
    assert "changed by" in compare_outputs([x], [x + 1e-3])
    y = x.clone()
    y[0, 0] = float("nan")
    assert "non-finite" in compare_outputs([x], [y])
    assert "returned 2 tensors instead of 1" in compare_outputs([x], [x, x])
    assert "output 0 changed" in compare_outputs([torch.arange(3)], [torch.arange(1, 4)])
    assert tolerance(torch.float16) > tolerance(torch.float32) > tolerance(torch.float64) and tolerance(torch.int64) == 0
