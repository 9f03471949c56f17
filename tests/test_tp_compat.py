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
