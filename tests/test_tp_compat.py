"""The torch-pruning adapter: graph construction keeps modes, groups, version check."""
import warnings

import pytest
import torch
import torch.nn as nn

from demp.core import tp_compat
from demp.core.detection import call_model


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(4, 2, 1))


def test_build_dependency_keeps_every_module_mode():
    model = _net().train()
    model[3].eval()  # mixed modes must survive
    tp_compat.build_dependency(model, torch.randn(1, 3, 5, 5), call_model, {})
    assert [m.training for m in model] == [True, True, True, False, True]


def test_pruning_group_maps_producer_and_consumer():
    model = _net()
    dg = tp_compat.build_dependency(model, torch.randn(1, 3, 5, 5), call_model, {})
    items = tp_compat.pruning_group(dg, model[0], [1, 3])
    by_module = {id(it.node.module): it for it in items}
    assert by_module[id(model[1])].idxs == [1, 3]            # BatchNorm follows the conv
    consumer = by_module[id(model[4])]
    assert tp_compat.is_in_channel_fn(dg, consumer.handler)   # next conv loses input columns
    assert sorted(consumer.root_idxs) == [1, 3]


def test_version_mismatch_warns(monkeypatch):
    monkeypatch.setattr(tp_compat, "_installed_version", lambda: "9.9.9")
    with pytest.warns(UserWarning, match="torch-pruning 9.9.9 is installed.*1.6.1"):
        tp_compat.check_version()
    monkeypatch.setattr(tp_compat, "_installed_version", lambda: tp_compat.TESTED_VERSION)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp_compat.check_version()


class _TransposedLinear(nn.Module):
    """A linear layer holding its weight as (in, out), as GPT-2's Conv1D does."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.nx, self.nf = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class _FFN(nn.Module):
    """A feed-forward block of transposed-weight linear layers."""

    def __init__(self):
        super().__init__()
        self.fc, self.proj = _TransposedLinear(6, 10), _TransposedLinear(10, 6)

    def forward(self, x):
        return self.proj(torch.relu(self.fc(x)))


def test_transposed_linear_pruner_removes_producer_columns_and_consumer_rows():
    import demp
    model = _FFN()
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        model.fc.weight[:, [2, 7]] = 0.0
        model.fc.bias[[2, 7]] = -1.0
        before = model(x)
    assert demp.find_dead_units(model, [x])["/relu"][[2, 7]].all()
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 7]] = True
    report = demp.remove_units(model, {"/relu": mask}, x,
                               pruners={_TransposedLinear: tp_compat.TransposedLinearPruner()})
    assert report.units_removed == 2 and model.fc.nf == model.fc.weight.shape[1] == model.proj.nx == 8
    assert model.proj.weight.shape == (8, 6) and model.fc.bias.shape == (8,)
    torch.testing.assert_close(model(x), before)


def test_graph_failure_names_layer_types_without_a_pruner():
    assert tp_compat.unknown_layer_types(_FFN(), {}) == ["_TransposedLinear"]
    assert tp_compat.unknown_layer_types(_FFN(), {_TransposedLinear: tp_compat.TransposedLinearPruner()}) == []
